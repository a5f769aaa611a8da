package broker

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"net"
	"strings"
	"testing"
	"time"
)

// caching_sha2_password's scramble matches go-sql-driver/mysql's test
// vectors; mysql_native_password's passes the server's check.
func TestScramblePassword(t *testing.T) {
	scramble := []byte{10, 47, 74, 111, 75, 73, 34, 48, 88, 76, 114, 74, 37, 13, 3, 80, 82, 2, 23, 21}
	for _, tc := range []struct{ pass, want string }{
		{"secret", "f490e76f66d9d86665ce54d98c78d0acfe2fb0b08b423da807144873d30b312c"},
		{"secret2", "abc3934a012cf342e876071c8ee202de51785b430258a7a0138bc79c4d800bc6"},
	} {
		got, err := scramblePassword(cachingSHA2, scramble, tc.pass)
		if err != nil || hex.EncodeToString(got) != tc.want {
			t.Errorf("caching_sha2_password(%q) = %x, %v; want %s", tc.pass, got, err, tc.want)
		}
	}
	// The server holds SHA1(SHA1(password)) and checks that
	// SHA1(response XOR SHA1(scramble + stored)) is what it holds.
	got, _ := scramblePassword(nativePassword, scramble, "secret")
	h1 := sha1.Sum([]byte("secret"))
	stored := sha1.Sum(h1[:])
	mix := sha1.Sum(append(append([]byte{}, scramble...), stored[:]...))
	for i := range mix {
		mix[i] ^= got[i]
	}
	if check := sha1.Sum(mix[:]); check != stored {
		t.Errorf("mysql_native_password's response fails the server's check")
	}
	if _, err := scramblePassword("client_ed25519", scramble, "x"); err == nil || !strings.Contains(err.Error(), "client_ed25519") {
		t.Errorf("an unknown plugin: %v", err)
	}
}

// fakeLogin runs the broker's login against a scripted database: each
// step reads the broker's packet, checks it, and answers.
func fakeLogin(t *testing.T, plugin string, steps ...func(p []byte) [][]byte) ([]byte, error) {
	t.Helper()
	s, err := NewMySQL(MySQLConfig{Backend: "127.0.0.1:1", TLSMode: TLSDisable, Credentials: CredentialsFunc(nil)})
	if err != nil {
		t.Fatal(err)
	}
	broker, db := net.Pipe()
	defer broker.Close()
	defer db.Close()
	broker.SetDeadline(time.Now().Add(5 * time.Second))
	db.SetDeadline(time.Now().Add(5 * time.Second))
	scramble := bytes.Repeat([]byte{7}, 20)
	g := &greeting{version: "8.4.0", caps: clientProtocol41 | clientSecureConn | clientPluginAuth | clientMySQL, scramble: scramble, plugin: plugin}
	go func() {
		for _, step := range steps {
			seq, p, err := readPacket(db, 1<<16)
			if err != nil {
				return
			}
			for _, out := range step(p) {
				seq++
				if writePacket(db, seq, out) != nil {
					return
				}
			}
		}
		db.Close()
	}()
	_, ok, err := s.login(t.Context(), broker, g, &handshakeResponse{caps: clientProtocol41 | clientMySQL, charset: 45}, Credential{User: "blue", Password: "blue-pw"})
	return ok, err
}

// caching_sha2_password: the fast path and an AuthSwitchRequest log in;
// a full authentication over plaintext is refused, the password unsent.
func TestMySQLLoginCachingSHA2(t *testing.T) {
	sha := func(scramble []byte) []byte { b, _ := scramblePassword(cachingSHA2, scramble, "blue-pw"); return b }
	ok := []byte{0, 0, 0, 2, 0, 0, 0}
	wantAuth := func(t *testing.T, p, auth []byte) {
		if !bytes.Contains(p, auth) {
			t.Errorf("the login packet lacks the scramble %x", auth)
		}
	}
	t.Run("fast", func(t *testing.T) {
		got, err := fakeLogin(t, cachingSHA2,
			func(p []byte) [][]byte {
				wantAuth(t, p, sha(bytes.Repeat([]byte{7}, 20)))
				return [][]byte{{1, 3}, ok}
			},
		)
		if err != nil || !bytes.Equal(got, ok) {
			t.Fatalf("fast authentication: %x, %v", got, err)
		}
	})
	t.Run("switch", func(t *testing.T) {
		fresh := bytes.Repeat([]byte{9}, 20)
		got, err := fakeLogin(t, "client_ed25519",
			func(p []byte) [][]byte {
				if !bytes.Contains(p, []byte(nativePassword+"\x00")) {
					t.Errorf("an unknown greeting plugin: the broker did not answer as %s", nativePassword)
				}
				return [][]byte{append(append([]byte{0xfe}, cachingSHA2+"\x00"...), append(fresh, 0)...)}
			},
			func(p []byte) [][]byte {
				if !bytes.Equal(p, sha(fresh)) {
					t.Errorf("the answer to the switch is %x, want %x", p, sha(fresh))
				}
				return [][]byte{ok}
			},
		)
		if err != nil || !bytes.Equal(got, ok) {
			t.Fatalf("login after a switch: %x, %v", got, err)
		}
	})
	t.Run("full over plaintext", func(t *testing.T) {
		_, err := fakeLogin(t, cachingSHA2,
			func(p []byte) [][]byte { return [][]byte{{1, 4}} },
			func(p []byte) [][]byte {
				t.Errorf("the broker answered a full authentication over plaintext: %q", p)
				return [][]byte{ok}
			},
		)
		if err == nil || !strings.Contains(err.Error(), "only over TLS") || strings.Contains(err.Error(), "blue-pw") {
			t.Fatalf("full authentication over plaintext: %v", err)
		}
	})
}
