package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/graft-sh/graft/sdk"
)

// A service connects with the address and token it was given, and reads
// its configuration. (These examples run against a graftd started by the
// package's TestMain, which sets GRAFT_ADDR and GRAFT_TOKEN.)
func Example() {
	ctx := context.Background()
	c, err := sdk.New(ctx, sdk.Config{Addr: os.Getenv("GRAFT_ADDR"), Token: os.Getenv("GRAFT_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Put(ctx, "/app/orders/replicated/postgres/user", []byte("orders-blue")); err != nil {
		log.Fatal(err)
	}
	e, err := c.Get(ctx, "/app/orders/replicated/postgres/user")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s = %s\n", e.Path, e.Value)
	// Output: /app/orders/replicated/postgres/user = orders-blue
}

// Errors keep the server's message and match the sdk sentinels.
func ExampleClient_Get_notFound() {
	ctx := context.Background()
	c, err := sdk.New(ctx, sdk.Config{Addr: os.Getenv("GRAFT_ADDR"), Token: os.Getenv("GRAFT_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	_, err = c.Get(ctx, "/app/x/db")
	fmt.Println(err)
	fmt.Println(errors.Is(err, sdk.ErrNotFound))
	// Output:
	// get /app/x/db: not found (see `graft ls /app/x`)
	// true
}

// IfRevision makes a write a compare-and-swap: read, change, write back
// only if nobody wrote in between.
func ExampleClient_Put_compareAndSwap() {
	ctx := context.Background()
	c, err := sdk.New(ctx, sdk.Config{Addr: os.Getenv("GRAFT_ADDR"), Token: os.Getenv("GRAFT_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// IfRevision(0): create only if the path does not exist yet.
	first, err := c.Put(ctx, "/dba/orders/active-user", []byte("blue"), sdk.IfRevision(0))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.Put(ctx, "/dba/orders/active-user", []byte("green"), sdk.IfRevision(first.Revision)); err != nil {
		log.Fatal(err)
	}
	// A writer still holding the first revision loses.
	_, err = c.Put(ctx, "/dba/orders/active-user", []byte("red"), sdk.IfRevision(first.Revision))
	fmt.Println(errors.Is(err, sdk.ErrFailedPrecondition))
	// Output: true
}

func ExampleClient_List() {
	ctx := context.Background()
	c, err := sdk.New(ctx, sdk.Config{Addr: os.Getenv("GRAFT_ADDR"), Token: os.Getenv("GRAFT_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	for _, p := range []string{"/app/shop/db/user", "/app/shop/db/password", "/app/shop/feature-flags"} {
		if _, err := c.Put(ctx, p, []byte("x")); err != nil {
			log.Fatal(err)
		}
	}
	items, err := c.List(ctx, "/app/shop")
	if err != nil {
		log.Fatal(err)
	}
	for _, it := range items {
		fmt.Println(it.Path, it.Directory)
	}
	items, err = c.List(ctx, "/app/shop", sdk.Recursive())
	if err != nil {
		log.Fatal(err)
	}
	for _, it := range items {
		fmt.Println(it.Path)
	}
	// Output:
	// /app/shop/db true
	// /app/shop/feature-flags false
	// /app/shop/db/password
	// /app/shop/db/user
	// /app/shop/feature-flags
}

// Restore brings an old value back as a new revision; History shows it.
func ExampleClient_Restore() {
	ctx := context.Background()
	c, err := sdk.New(ctx, sdk.Config{Addr: os.Getenv("GRAFT_ADDR"), Token: os.Getenv("GRAFT_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	good, err := c.Put(ctx, "/app/billing/rate-limit", []byte("100"))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.Put(ctx, "/app/billing/rate-limit", []byte("1")); err != nil { // a mistake
		log.Fatal(err)
	}
	restored, err := c.Restore(ctx, "/app/billing/rate-limit", good.Revision)
	if err != nil {
		log.Fatal(err)
	}
	e, err := c.Get(ctx, "/app/billing/rate-limit")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("value %s, a %s of the good revision: %v\n", e.Value, restored.Origin.Kind, restored.Origin.SourceRevision == good.Revision)

	history, err := c.History(ctx, "/app/billing/rate-limit")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(history), "versions; newest is current:", history[0].Current)
	// Output:
	// value 100, a restore of the good revision: true
	// 3 versions; newest is current: true
}

// RestorePrefix returns a whole subtree to a point in time; a dry run
// shows the plan first.
func ExampleClient_RestorePrefix() {
	ctx := context.Background()
	c, err := sdk.New(ctx, sdk.Config{Addr: os.Getenv("GRAFT_ADDR"), Token: os.Getenv("GRAFT_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Put(ctx, "/dba/ledger/postgres/user", []byte("ledger-blue")); err != nil {
		log.Fatal(err)
	}
	before := time.Now()
	if _, err := c.Put(ctx, "/dba/ledger/postgres/user", []byte("ledger-green")); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Put(ctx, "/dba/ledger/postgres/stray", []byte("oops")); err != nil {
		log.Fatal(err)
	}

	plan, err := c.RestorePrefix(ctx, "/dba/ledger", before, true)
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range plan.Steps {
		fmt.Println("plan:", s.Action, s.Path)
	}
	if _, err := c.RestorePrefix(ctx, "/dba/ledger", before, false); err != nil {
		log.Fatal(err)
	}
	e, err := c.Get(ctx, "/dba/ledger/postgres/user")
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Get(ctx, "/dba/ledger/postgres/stray")
	fmt.Printf("user %s; stray deleted: %v\n", e.Value, errors.Is(err, sdk.ErrNotFound))
	// Output:
	// plan: delete /dba/ledger/postgres/stray
	// plan: restore /dba/ledger/postgres/user
	// user ledger-blue; stray deleted: true
}

// Watch delivers every change under a prefix once, in order, across
// graftd restarts. Resume a stopped watcher from its last revision + 1.
func ExampleClient_Watch() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := sdk.New(ctx, sdk.Config{Addr: os.Getenv("GRAFT_ADDR"), Token: os.Getenv("GRAFT_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// From revision 0: the changes made after Watch returns.
	changes := c.Watch(ctx, "/app/payments", 0)
	if _, err := c.Put(ctx, "/app/payments/api-key", []byte("k-1")); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Delete(ctx, "/app/payments/api-key"); err != nil {
		log.Fatal(err)
	}
	seen := 0
	for resp := range changes {
		if resp.Err != nil {
			log.Fatal(resp.Err)
		}
		for _, ev := range resp.Events {
			if ev.Type == sdk.EventPut {
				fmt.Printf("put %s = %s\n", ev.Entry.Path, ev.Entry.Value)
			} else {
				fmt.Printf("%s %s\n", ev.Type, ev.Entry.Path)
			}
			seen++
		}
		if seen == 2 {
			cancel() // the channel closes
		}
	}
	// Output:
	// put /app/payments/api-key = k-1
	// delete /app/payments/api-key
}

// An operator issues a token for an application, which then sees only its
// own tree. The token is returned once; keep it in the application's
// secret store.
func ExampleClient_CreateToken() {
	ctx := context.Background()
	admin, err := sdk.New(ctx, sdk.Config{Addr: os.Getenv("GRAFT_ADDR"), Token: os.Getenv("GRAFT_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	defer admin.Close()

	token, info, err := admin.CreateToken(ctx, "app:orders", []string{"app"}, 720*time.Hour)
	if err != nil {
		log.Fatal(err)
	}

	app, err := sdk.New(ctx, sdk.Config{Addr: os.Getenv("GRAFT_ADDR"), Token: token})
	if err != nil {
		log.Fatal(err)
	}
	defer app.Close()
	id, err := app.WhoAmI(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(id.Principal, id.Roles, id.Method, id.Accessor == info.Accessor)
	_, err = app.Get(ctx, "/dba/orders/postgres/password")
	fmt.Println(err)
	// Output:
	// app:orders [app] token true
	// permission denied: app:orders may not read /dba/orders/postgres/password
}

// The README's snippet as it runs: each line of the README's go block is
// a line here, in order (TestReadmeSDKSnippetIsAnExample in cmd/graft
// checks), with the error handling it leaves out around them. (It once
// gave one path's revision as another path's IfRevision, which fails.)
func Example_readme() {
	ctx := context.Background()
	c, err := sdk.New(ctx, sdk.Config{Addr: os.Getenv("GRAFT_ADDR"), Token: os.Getenv("GRAFT_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// What the README's tour made before: a copy in the application's tree.
	if _, err := c.Put(ctx, "/app/message-processor/replicated/mongo/password", []byte("r0tated")); err != nil {
		log.Fatal(err)
	}

	pw, err := c.Get(ctx, "/app/message-processor/replicated/mongo/password")
	if err != nil {
		log.Fatal(err)
	}
	w, err := c.Put(ctx, "/app/message-processor/config/workers", []byte("4"))
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Put(ctx, w.Path, []byte("8"), sdk.IfRevision(w.Revision))
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Put(ctx, w.Path, []byte("16"), sdk.IfRevision(w.Revision))
	fmt.Println("a second write from the same revision refused:", errors.Is(err, sdk.ErrFailedPrecondition))
	_, err = c.PutTree(ctx, "/dba/passpack/services/message-processor/redis", map[string][]byte{
		"user": []byte("mp-cache"), "password": pw.Value})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond) // the README's loop runs until its context ends
	defer cancel()
	for resp := range c.Watch(ctx, "/app/message-processor", 0) {
		if resp.Err != nil && !errors.Is(resp.Err, context.DeadlineExceeded) {
			log.Fatal(resp.Err)
		}
	}
	fmt.Println("done")
	// Output:
	// a second write from the same revision refused: true
	// done
}
