package rollout

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// TestEncodedBoundIsAnUpperBound: Validate measures a report's encoding
// only when encodedBound says it could be too large, so the bound must
// never be below the encoding, whatever the texts hold (characters JSON
// escapes to six bytes, invalid UTF-8, the largest numbers).
func TestEncodedBoundIsAnUpperBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "<", ">", "&", "\"", "\\", "\u2028", "\xff", "é", "/"}
	text := func(max int) string {
		var b strings.Builder
		for range rng.IntN(max + 1) {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		return b.String()
	}
	for i := range 2000 {
		rep := Report{ID: text(8), App: text(8), Host: text(8), Revision: -1 << 63, Healthy: true, Reason: text(20),
			Time: time.Date(2026, 12, 7, 23, 59, 59, 999999999, time.FixedZone("x", -11*3600)), Principal: text(8),
			Lease: -1 << 63, Instance: text(8), HTTPAddress: text(8), Since: -1 << 63}
		for range rng.IntN(4) {
			tr := TemplateReport{Destination: text(10), SHA256: text(10), Error: text(10)}
			for range rng.IntN(4) {
				tr.Keys = append(tr.Keys, text(6))
			}
			rep.Templates = append(rep.Templates, tr)
		}
		for range rng.IntN(3) {
			rep.Reloads = append(rep.Reloads, ReloadReport{Kind: text(6), Error: text(10)})
		}
		for range rng.IntN(3) {
			rep.Leases = append(rep.Leases, LeaseReport{ID: text(6), Path: text(10), Username: text(8), Retiring: true})
		}
		b, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		if bound := encodedBound(rep); bound < len(b) {
			t.Fatalf("report %d: bound %d < encoded %d bytes: %s", i, bound, len(b), b)
		}
	}
}
