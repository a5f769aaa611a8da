package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// api serves petstore's HTTP endpoints.
type api struct {
	db  *db
	src source
	log *slog.Logger
}

func (a *api) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /pets", a.listPets)
	mux.HandleFunc("POST /pet", a.addPet)
	mux.HandleFunc("GET /healthz", a.healthz)
	return mux
}

// Limits of the API.
const (
	defaultLimit = 100
	maxLimit     = 1000
	maxNameChars = 100
	maxBodyBytes = 64 << 10
)

// listPets answers GET /pets[?limit=N]: the newest pets first.
func (a *api) listPets(w http.ResponseWriter, r *http.Request) {
	limit := defaultLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit must be a whole number from 1 to %d", maxLimit))
			return
		}
		limit = n
	}
	pets, err := a.db.listPets(r.Context(), limit)
	if err != nil {
		a.dbFailed(w, r, err)
		return
	}
	if pets == nil {
		pets = []Pet{}
	}
	writeJSON(w, http.StatusOK, pets)
}

// addPet answers POST /pet with {"name": "..."}: 201 and the pet.
func (a *api) addPet(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name string `json:"name"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, `the body must be a JSON object {"name": "..."}: `+err.Error())
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, `the body must be one JSON object {"name": "..."}, and nothing after it`)
		return
	}
	name := strings.TrimSpace(in.Name)
	switch {
	case name == "":
		writeError(w, http.StatusBadRequest, "name is required")
		return
	case utf8.RuneCountInString(name) > maxNameChars:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("name is longer than %d characters", maxNameChars))
		return
	}
	pet, err := a.db.addPet(r.Context(), name)
	if err != nil {
		a.dbFailed(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, pet)
}

// healthz answers 200 when a ping on the pool in use succeeds and, with
// --config, that pool uses the settings the file holds now. The second
// condition is what makes graft-agent's health check after a reload
// meaningful: it passes only once petstore has moved to the new
// credentials, so a rotation that waits for healthy consumers never
// retires the old user while petstore still depends on it.
func (a *api) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	inUse, err := a.db.ping(ctx)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, health{Status: "unavailable", User: inUse.User, Error: "ping the database: " + err.Error()})
		return
	}
	if a.src.file != "" {
		s, err := a.src.load()
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, health{Status: "stale", User: inUse.User, Error: err.Error()})
			return
		}
		if s != inUse {
			writeJSON(w, http.StatusServiceUnavailable, health{Status: "stale", User: inUse.User,
				Error: "the settings in " + a.src.file + " are not in use (yet: send SIGHUP; or they failed: see the log)"})
			return
		}
	}
	writeJSON(w, http.StatusOK, health{Status: "ok", User: inUse.User})
}

type health struct {
	Status string `json:"status"`
	// User is the database user petstore is connected as.
	User  string `json:"user"`
	Error string `json:"error,omitempty"`
}

func (a *api) dbFailed(w http.ResponseWriter, r *http.Request, err error) {
	a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, "the database request failed (see petstore's log)")
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
