// Command envserver is the application of the integration suite's docker
// reload test. At start it loads the KEY=VALUE lines of $ENV_FILE into its
// environment, so a new value shows only after a restart; then, on $PORT
// (default 8080), GET / answers its APP_* variables, sorted, one a line,
// and GET /healthz answers 200, or 503 while APP_HEALTHY=false.
// `envserver health` probes /healthz, for a HEALTHCHECK in an image
// without a shell.
package main

import (
	"bufio"
	"fmt"
	"log"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if len(os.Args) > 1 && os.Args[1] == "health" {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://127.0.0.1:" + port + "/healthz")
		if err != nil || resp.StatusCode != http.StatusOK {
			os.Exit(1)
		}
		return
	}
	if f := os.Getenv("ENV_FILE"); f != "" {
		if err := load(f); err != nil {
			log.Fatalf("envserver: %v", err)
		}
	}
	http.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		var vars []string
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, "APP_") {
				vars = append(vars, kv)
			}
		}
		slices.Sort(vars)
		for _, kv := range vars {
			fmt.Fprintln(w, kv)
		}
	})
	http.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if os.Getenv("APP_HEALTHY") == "false" {
			http.Error(w, "unhealthy: APP_HEALTHY=false", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	log.Printf("envserver started, listening on :%s", port)
	log.Fatal(http.ListenAndServe(":"+port, nil))
}

// load sets the KEY=VALUE lines of file in the environment; blank lines
// and # comments are skipped.
func load(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("%s: line %d is not KEY=VALUE", file, n)
		}
		os.Setenv(k, v)
	}
	return sc.Err()
}
