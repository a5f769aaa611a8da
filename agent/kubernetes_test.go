package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/testenv"
)

// apps is client-go's fake clientset as the action's client: its typed
// clients are agent.WorkloadClients.
type apps struct{ cs *fake.Clientset }

func (a apps) Deployments(ns string) agent.WorkloadClient[*appsv1.Deployment] {
	return a.cs.AppsV1().Deployments(ns)
}

func (a apps) StatefulSets(ns string) agent.WorkloadClient[*appsv1.StatefulSet] {
	return a.cs.AppsV1().StatefulSets(ns)
}

func (a apps) DaemonSets(ns string) agent.WorkloadClient[*appsv1.DaemonSet] {
	return a.cs.AppsV1().DaemonSets(ns)
}

// newCluster is client-go's fake clientset (with field management) holding
// objs, which bumps metadata.generation when a patch changes a pod
// template, as the apiserver does: without that, the status of the
// rollout before would pass for the restart's.
func newCluster(t *testing.T, objs ...runtime.Object) *fake.Clientset {
	t.Helper()
	cs := fake.NewClientset(objs...)
	cs.PrependReactor("patch", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		pa := action.(k8stesting.PatchActionImpl)
		tr, gvr, ns := cs.Tracker(), pa.GetResource(), pa.GetNamespace()
		before, err := tr.Get(gvr, ns, pa.GetName())
		if err != nil {
			return true, nil, err
		}
		if _, _, err := k8stesting.ObjectReaction(tr)(action); err != nil {
			return true, nil, err
		}
		after, err := tr.Get(gvr, ns, pa.GetName())
		if err != nil {
			return true, nil, err
		}
		if !reflect.DeepEqual(podTemplate(before), podTemplate(after)) {
			m := after.(metav1.Object)
			m.SetGeneration(m.GetGeneration() + 1)
			if err := tr.Update(gvr, after, ns, metav1.UpdateOptions{FieldManager: pa.PatchOptions.FieldManager}); err != nil {
				return true, nil, err
			}
			if after, err = tr.Get(gvr, ns, pa.GetName()); err != nil {
				return true, nil, err
			}
		}
		return true, after, nil
	})
	return cs
}

func podTemplate(obj runtime.Object) corev1.PodTemplateSpec {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.Spec.Template
	case *appsv1.StatefulSet:
		return o.Spec.Template
	case *appsv1.DaemonSet:
		return o.Spec.Template
	}
	panic("no pod template in " + reflect.TypeOf(obj).String())
}

// rollOut plays the workload controllers in ns until the test ends: each
// new generation is rolled out at once.
func rollOut(t *testing.T, cs *fake.Clientset, ns string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	api := cs.AppsV1()
	for _, w := range []func() (watch.Interface, error){
		func() (watch.Interface, error) { return api.Deployments(ns).Watch(ctx, metav1.ListOptions{}) },
		func() (watch.Interface, error) { return api.StatefulSets(ns).Watch(ctx, metav1.ListOptions{}) },
		func() (watch.Interface, error) { return api.DaemonSets(ns).Watch(ctx, metav1.ListOptions{}) },
	} {
		wt, err := w()
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer wt.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case ev := <-wt.ResultChan():
					if ev.Type == watch.Added || ev.Type == watch.Modified {
						complete(ctx, t, cs, ev.Object)
					}
				}
			}
		}()
	}
}

// complete writes the status of a finished rollout of obj's generation, as
// its controller would.
func complete(ctx context.Context, t *testing.T, cs *fake.Clientset, obj runtime.Object) {
	opts := metav1.UpdateOptions{FieldManager: "kube-controller-manager"}
	var err error
	switch o := obj.DeepCopyObject().(type) { // the fake's watch shares what it stores
	case *appsv1.Deployment:
		if o.Status.ObservedGeneration >= o.Generation {
			return
		}
		n := *o.Spec.Replicas
		o.Status = appsv1.DeploymentStatus{ObservedGeneration: o.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
		_, err = cs.AppsV1().Deployments(o.Namespace).UpdateStatus(ctx, o, opts)
	case *appsv1.StatefulSet:
		if o.Status.ObservedGeneration >= o.Generation {
			return
		}
		n, rev := *o.Spec.Replicas, "rev-"+o.ResourceVersion
		o.Status = appsv1.StatefulSetStatus{ObservedGeneration: o.Generation, Replicas: n, ReadyReplicas: n, UpdatedReplicas: n, CurrentReplicas: n, CurrentRevision: rev, UpdateRevision: rev}
		_, err = cs.AppsV1().StatefulSets(o.Namespace).UpdateStatus(ctx, o, opts)
	case *appsv1.DaemonSet:
		if o.Status.ObservedGeneration >= o.Generation {
			return
		}
		o.Status = appsv1.DaemonSetStatus{ObservedGeneration: o.Generation, DesiredNumberScheduled: 2, CurrentNumberScheduled: 2, UpdatedNumberScheduled: 2, NumberReady: 2, NumberAvailable: 2}
		_, err = cs.AppsV1().DaemonSets(o.Namespace).UpdateStatus(ctx, o, opts)
	}
	if err != nil && ctx.Err() == nil {
		t.Errorf("the controller's status update: %v", err)
	}
}

func int32p(n int32) *int32 { return &n }

// deployment is message-processor in prod, with two replicas and its
// rollout of generation 1 complete.
func deployment() *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "message-processor", Namespace: "prod", Generation: 1},
		Spec: appsv1.DeploymentSpec{Replicas: int32p(2), Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"prometheus.io/scrape": "true"}}}},
		Status: appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 2, AvailableReplicas: 2},
	}
}

var mpAction = &agent.KubernetesAction{Deployment: "message-processor", Namespace: "prod"}

// patches are the patch requests the fake clientset received.
func patches(cs *fake.Clientset) []k8stesting.PatchActionImpl {
	var out []k8stesting.PatchActionImpl
	for _, a := range cs.Actions() {
		if p, ok := a.(k8stesting.PatchActionImpl); ok {
			out = append(out, p)
		}
	}
	return out
}

// restartedAt is the restart annotation on the pod template of the
// deployment message-processor in prod.
func restartedAt(t *testing.T, cs *fake.Clientset) string {
	t.Helper()
	d, err := cs.AppsV1().Deployments("prod").Get(context.Background(), "message-processor", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template.Annotations["graft.sh/restartedAt"]
}

// The restart is kubectl rollout restart's, under graft-agent's name: a
// strategic merge patch of one annotation on the pod template, with field
// manager graft-agent, which shows in the object's managedFields; the
// template's other annotations stay.
func TestKubernetesRestartPatchesThePodTemplate(t *testing.T) {
	cs := newCluster(t, deployment())
	rollOut(t, cs, "prod")
	before := time.Now()
	if err := agent.KubernetesRunner(mpAction, apps{cs}, testenv.Logger(t))(t.Context()); err != nil {
		t.Fatal(err)
	}
	after := time.Now()

	d, err := cs.AppsV1().Deployments("prod").Get(t.Context(), "message-processor", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stamp := d.Spec.Template.Annotations["graft.sh/restartedAt"]
	at, err := time.Parse(time.RFC3339Nano, stamp)
	if err != nil || at.Before(before) || at.After(after) {
		t.Fatalf("graft.sh/restartedAt = %q (%v), want an RFC 3339 time between %s and %s", stamp, err, before, after)
	}
	if d.Spec.Template.Annotations["prometheus.io/scrape"] != "true" {
		t.Fatalf("the patch dropped the template's other annotations: %v", d.Spec.Template.Annotations)
	}
	if _, ok := d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"]; ok {
		t.Fatal("the restart used kubectl's annotation, which GitOps tools cannot tell from a person's restart")
	}
	if d.Generation != 2 || d.Status.ObservedGeneration != 2 {
		t.Fatalf("generation %d observed %d, want the restart's generation 2 rolled out", d.Generation, d.Status.ObservedGeneration)
	}

	ps := patches(cs)
	if len(ps) != 1 {
		t.Fatalf("%d patches, want 1", len(ps))
	}
	p := ps[0]
	if p.GetPatchType() != types.StrategicMergePatchType || p.PatchOptions.FieldManager != "graft-agent" || p.GetNamespace() != "prod" || p.GetName() != "message-processor" {
		t.Fatalf("patch %s %s/%s type %s field manager %q; want a strategic merge patch of prod/message-processor by graft-agent",
			p.GetResource().Resource, p.GetNamespace(), p.GetName(), p.GetPatchType(), p.PatchOptions.FieldManager)
	}
	var body map[string]any
	if err := json.Unmarshal(p.GetPatch(), &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
		"annotations": map[string]any{"graft.sh/restartedAt": stamp}}}}}
	if !reflect.DeepEqual(body, want) {
		t.Fatalf("patch = %s, want only the pod template's graft.sh/restartedAt", p.GetPatch())
	}

	owned := false
	for _, mf := range d.ManagedFields {
		if mf.Manager == "graft-agent" && mf.FieldsV1 != nil && strings.Contains(string(mf.FieldsV1.Raw), `"f:graft.sh/restartedAt"`) {
			owned = true
		}
	}
	if !owned {
		t.Fatalf("no managedFields entry of graft-agent owns the annotation: %+v", d.ManagedFields)
	}
}

// The action returns only once the controller has observed the restart's
// generation and every replica is new and available, none old left.
func TestKubernetesRestartWaitsForTheRollout(t *testing.T) {
	cs := newCluster(t, deployment())
	done := make(chan error, 1)
	go func() {
		done <- agent.KubernetesRunner(mpAction, apps{cs}, testenv.Logger(t))(context.Background())
	}()
	testenv.WaitFor(t, 5*time.Second, func() bool { return restartedAt(t, cs) != "" })
	setStatus := func(st appsv1.DeploymentStatus) {
		t.Helper()
		d, err := cs.AppsV1().Deployments("prod").Get(t.Context(), "message-processor", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.Status = st
		if _, err := cs.AppsV1().Deployments("prod").UpdateStatus(t.Context(), d, metav1.UpdateOptions{FieldManager: "kube-controller-manager"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, st := range []appsv1.DeploymentStatus{
		{ObservedGeneration: 1, Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 2}, // the rollout before, complete
		{ObservedGeneration: 2, Replicas: 3, UpdatedReplicas: 1, AvailableReplicas: 2}, // one new replica
		{ObservedGeneration: 2, Replicas: 3, UpdatedReplicas: 2, AvailableReplicas: 2}, // an old one left
		{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 1}, // a new one not available
	} {
		setStatus(st)
		select {
		case err := <-done:
			t.Fatalf("the action returned (%v) at status %+v, before the rollout completed", err, st)
		case <-time.After(100 * time.Millisecond):
		}
	}
	setStatus(appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 2})
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the completed rollout: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the action did not return after the rollout completed")
	}
}

// A rollout whose Progressing condition says ProgressDeadlineExceeded fails
// at once, long before the action's timeout, saying which and why.
func TestKubernetesRestartFailsOnProgressDeadline(t *testing.T) {
	cs := newCluster(t, deployment())
	k := *mpAction
	k.Timeout = time.Minute
	done := make(chan error, 1)
	go func() { done <- agent.KubernetesRunner(&k, apps{cs}, testenv.Logger(t))(context.Background()) }()
	testenv.WaitFor(t, 5*time.Second, func() bool { return restartedAt(t, cs) != "" })
	d, err := cs.AppsV1().Deployments("prod").Get(t.Context(), "message-processor", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 3, UpdatedReplicas: 1, AvailableReplicas: 2,
		Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse,
			Reason: "ProgressDeadlineExceeded", Message: `ReplicaSet "message-processor-2" has timed out progressing.`}}}
	if _, err := cs.AppsV1().Deployments("prod").UpdateStatus(t.Context(), d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		for _, want := range []string{"deployment prod/message-processor", "exceeded its progress deadline", "has timed out progressing"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("the failed rollout: %v, want it to say %q", err, want)
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a rollout past its progress deadline did not fail at once")
	}
}

// A rollout that does not complete within the timeout fails then, saying
// what it still waited for.
func TestKubernetesRestartTimesOut(t *testing.T) {
	cs := newCluster(t, deployment())
	k := *mpAction
	k.Timeout = 300 * time.Millisecond
	start := time.Now()
	err := agent.KubernetesRunner(&k, apps{cs}, testenv.Logger(t))(t.Context())
	if took := time.Since(start); took < k.Timeout || took > 5*time.Second {
		t.Fatalf("returned after %s, want the timeout of %s", took, k.Timeout)
	}
	for _, want := range []string{"did not complete within 300ms", "waiting for the deployment controller to observe the restart", "kubernetes.timeout"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("the timed-out rollout: %v, want it to say %q", err, want)
		}
	}
}

// Each kind kubectl rollout restart knows is restarted the same way, and
// a namespace left out is the agent's own (outside a pod: default).
func TestKubernetesRestartsEachKind(t *testing.T) {
	template := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "x"}}}
	for _, tc := range []struct {
		name   string
		action agent.KubernetesAction
		obj    runtime.Object
	}{
		{"deployment in the default namespace", agent.KubernetesAction{Deployment: "web"},
			&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", Generation: 1}, Spec: appsv1.DeploymentSpec{Replicas: int32p(1), Template: template}}},
		{"statefulset", agent.KubernetesAction{StatefulSet: "db", Namespace: "prod"},
			&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "prod", Generation: 1}, Spec: appsv1.StatefulSetSpec{Replicas: int32p(3), Template: template}}},
		{"daemonset", agent.KubernetesAction{DaemonSet: "node-agent", Namespace: "kube-system"},
			&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "node-agent", Namespace: "kube-system", Generation: 1}, Spec: appsv1.DaemonSetSpec{Template: template}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := os.Stat("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil && tc.action.Namespace == "" {
				t.Skip("runs in a pod, whose namespace is the default")
			}
			cs := newCluster(t, tc.obj)
			ns := tc.obj.(metav1.Object).GetNamespace()
			rollOut(t, cs, ns)
			if err := agent.KubernetesRunner(&tc.action, apps{cs}, testenv.Logger(t))(t.Context()); err != nil {
				t.Fatal(err)
			}
			m := tc.obj.(metav1.Object)
			gvr := schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: strings.ToLower(reflect.TypeOf(tc.obj).Elem().Name()) + "s"}
			got, err := cs.Tracker().Get(gvr, ns, m.GetName())
			if err != nil {
				t.Fatal(err)
			}
			if podTemplate(got).Annotations["graft.sh/restartedAt"] == "" || got.(metav1.Object).GetGeneration() != 2 {
				t.Fatalf("%s %s/%s after the restart: template %+v, generation %d", gvr.Resource, ns, m.GetName(), podTemplate(got).ObjectMeta, got.(metav1.Object).GetGeneration())
			}
			if ps := patches(cs); len(ps) != 1 || ps[0].PatchOptions.FieldManager != "graft-agent" {
				t.Fatalf("patches: %+v", ps)
			}
		})
	}
}

// What cannot work is refused before anything is patched, or fails with an
// error that says what to do.
func TestKubernetesRestartErrorsSayWhatToDo(t *testing.T) {
	paused := deployment()
	paused.Spec.Paused = true
	onDelete := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "prod"},
		Spec: appsv1.StatefulSetSpec{UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}}}
	forbid := func(cs *fake.Clientset) {
		cs.PrependReactor("patch", "deployments", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "deployments"}, "message-processor",
				errors.New(`User "system:serviceaccount:prod:graft-agent" cannot patch resource "deployments" in API group "apps" in the namespace "prod"`))
		})
	}
	for _, tc := range []struct {
		name        string
		action      agent.KubernetesAction
		objs        []runtime.Object
		react       func(*fake.Clientset)
		wantPatches int
		want        []string
	}{
		{"not found", *mpAction, nil, nil, 0, []string{`no deployment "message-processor" in namespace prod`, "check the name and kubernetes.namespace"}},
		{"forbidden", *mpAction, []runtime.Object{deployment()}, forbid, 1, []string{"cannot patch", "needs get, patch and watch on deployments in namespace prod"}},
		{"paused", *mpAction, []runtime.Object{paused}, nil, 0, []string{"deployment prod/message-processor", "paused", "kubectl rollout resume"}},
		{"on delete", agent.KubernetesAction{StatefulSet: "db", Namespace: "prod"}, []runtime.Object{onDelete}, nil, 0, []string{"statefulset prod/db", "OnDelete", "use RollingUpdate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := newCluster(t, tc.objs...)
			if tc.react != nil {
				tc.react(cs)
			}
			err := agent.KubernetesRunner(&tc.action, apps{cs}, testenv.Logger(t))(t.Context())
			for _, want := range tc.want {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("error %v, want it to say %q", err, want)
				}
			}
			if n := len(patches(cs)); n != tc.wantPatches {
				t.Fatalf("%d patches, want %d", n, tc.wantPatches)
			}
		})
	}
}

// A workload deleted while the agent waits for its rollout fails the wait.
func TestKubernetesRestartFailsWhenTheWorkloadIsDeleted(t *testing.T) {
	cs := newCluster(t, deployment())
	done := make(chan error, 1)
	go func() { done <- agent.KubernetesRunner(mpAction, apps{cs}, testenv.Logger(t))(context.Background()) }()
	// Once the wait watches: the fake, unlike the apiserver, does not replay
	// a deletion to a watch that starts after it.
	testenv.WaitFor(t, 5*time.Second, func() bool {
		return slices.ContainsFunc(cs.Actions(), func(a k8stesting.Action) bool { return a.GetVerb() == "watch" })
	})
	if err := cs.AppsV1().Deployments("prod").Delete(t.Context(), "message-processor", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "deployment prod/message-processor was deleted during its rollout") {
			t.Fatalf("the deleted workload: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the wait did not notice the deletion")
	}
}

// Without a cluster to talk to, the action says so and how to name one.
func TestKubernetesWithoutACluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBECONFIG", "")
	t.Setenv("HOME", t.TempDir())
	err := agent.KubernetesRunner(mpAction, nil, testenv.Logger(t))(t.Context())
	if err == nil || !strings.Contains(err.Error(), "no cluster to talk to") || !strings.Contains(err.Error(), "set kubernetes.kubeconfig") {
		t.Fatalf("without a cluster: %v", err)
	}
}

// apiserver is a loopback stand-in for the Kubernetes API over HTTP, for
// one deployment, mp: GET, PATCH and a watch, with what it was asked.
type apiserver struct {
	mu       sync.Mutex
	requests []string // method path?query
	patch    []byte
	ctype    string
	forbid   bool
}

func (s *apiserver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests = append(s.requests, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
	forbid := s.forbid
	s.mu.Unlock()
	dep := func(gen, observed int64, rv string, updated int32) []byte {
		d := appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
			ObjectMeta: metav1.ObjectMeta{Name: "mp", Namespace: "ctx-ns", Generation: gen, ResourceVersion: rv},
			Spec:       appsv1.DeploymentSpec{Replicas: int32p(2)},
			Status:     appsv1.DeploymentStatus{ObservedGeneration: observed, Replicas: 2, UpdatedReplicas: updated, AvailableReplicas: updated}}
		b, _ := json.Marshal(d)
		return b
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.URL.Path != "/apis/apps/v1/namespaces/ctx-ns/deployments/mp" && r.URL.Path != "/apis/apps/v1/namespaces/ctx-ns/deployments":
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not here"}`)
	case r.Method == http.MethodGet && r.URL.Query().Get("watch") == "true":
		// Half the rollout, then all of it, as a watch stream.
		for _, updated := range []int32{1, 2} {
			w.Write([]byte(`{"type":"MODIFIED","object":`))
			w.Write(dep(2, 2, strconv.Itoa(10+int(updated)), updated))
			w.Write([]byte("}\n"))
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
	case r.Method == http.MethodGet:
		w.Write(dep(1, 1, "9", 2))
	case r.Method == http.MethodPatch && forbid:
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,`+
			`"message":"deployments.apps \"mp\" is forbidden: User \"jane\" cannot patch resource \"deployments\" in API group \"apps\" in the namespace \"ctx-ns\""}`)
	case r.Method == http.MethodPatch:
		w.Header().Set("Warning", `299 - "the test apiserver warns"`)
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.patch, s.ctype = body, r.Header.Get("Content-Type")
		s.mu.Unlock()
		w.Write(dep(2, 1, "10", 2))
	}
}

func (s *apiserver) asked() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

// Over HTTP, as the agent talks to a real cluster: the client comes from
// the kubeconfig (and its context's namespace), the patch carries the
// field manager, the watch is decoded, the cluster's warnings are logged, a
// refusal says which permission is missing; and the client is kept: a second reload needs the kubeconfig no
// more.
func TestKubernetesOverHTTP(t *testing.T) {
	api := &apiserver{}
	srv := httptest.NewServer(api)
	defer srv.Close()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "`+srv.URL+`"}}]
users: [{name: jane, user: {token: not-a-secret}}]
contexts: [{name: test, context: {cluster: test, user: jane, namespace: ctx-ns}}]
current-context: test
`), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.Buffer{}
	run := agent.KubernetesRunner(&agent.KubernetesAction{Deployment: "mp", Kubeconfig: kubeconfig}, nil, slogTo(logs))
	if err := run(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "the test apiserver warns") {
		t.Fatalf("the cluster's warning is not in the agent's log:\n%s", logs)
	}
	got := api.asked()
	want := []string{
		"GET /apis/apps/v1/namespaces/ctx-ns/deployments/mp?",
		"PATCH /apis/apps/v1/namespaces/ctx-ns/deployments/mp?fieldManager=graft-agent",
		"GET /apis/apps/v1/namespaces/ctx-ns/deployments?fieldSelector=metadata.name%3Dmp&resourceVersion=10&watch=true",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if api.ctype != "application/strategic-merge-patch+json" || !strings.Contains(string(api.patch), `"graft.sh/restartedAt"`) {
		t.Fatalf("patch %s (%s)", api.patch, api.ctype)
	}

	if err := os.Remove(kubeconfig); err != nil {
		t.Fatal(err)
	}
	api.mu.Lock()
	api.forbid = true
	api.mu.Unlock()
	err := run(t.Context())
	for _, want := range []string{"cannot patch resource", "needs get, patch and watch on deployments in namespace ctx-ns"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("the refused patch: %v, want it to say %q", err, want)
		}
	}
	if n := len(api.asked()); n != 5 {
		t.Fatalf("%d requests in all, want 5: the second reload did not reach the cluster with the kept client", n)
	}
}

// A DBA's change restarts the deployment through the agent: one restart
// for the first render and one for the change, counted in the metrics,
// and no value in what the agent sends.
func TestAgentRestartsAKubernetesDeployment(t *testing.T) {
	e := newEnv(t)
	cs := newCluster(t, deployment())
	rollOut(t, cs, "prod")
	out := filepath.Join(e.dir, "db.env")
	cfg := e.config([]agent.Template{{Destination: out, Contents: dbEnv}}, agent.Action{Kubernetes: mpAction})
	cfg.Kubernetes = apps{cs}
	a, _ := e.start(cfg)
	first := restartedAt(t, cs)
	if first == "" {
		t.Fatal("the first render did not restart the deployment")
	}
	e.put("/dba/mp/mongo/password", "s3cret-2")
	testenv.WaitFor(t, 10*time.Second, func() bool {
		return strings.Contains(scrape(t, a), `graft_agent_reloads_total{kind="kubernetes",outcome="ok"} 2`)
	})
	if got := restartedAt(t, cs); got == first || got == "" {
		t.Fatalf("graft.sh/restartedAt = %q after the change, was %q: not restarted again", got, first)
	}
	ps := patches(cs)
	if len(ps) != 2 {
		t.Fatalf("%d patches, want 2", len(ps))
	}
	for _, p := range ps {
		if strings.Contains(string(p.GetPatch()), "s3cret") {
			t.Fatalf("a value in the patch: %s", p.GetPatch())
		}
	}
}

// A rollout that failed is not retried: a retry would restart every pod
// again and hold the agent for another timeout.
func TestAgentDoesNotRetryAFailedRollout(t *testing.T) {
	e := newEnv(t)
	cs := newCluster(t, deployment())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wt, err := cs.AppsV1().Deployments("prod").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer wt.Stop()
	go func() { // a controller whose rollouts all miss their deadline
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-wt.ResultChan():
				d, ok := ev.Object.(*appsv1.Deployment)
				if !ok || d.Status.ObservedGeneration >= d.Generation {
					continue
				}
				d = d.DeepCopy()
				d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Conditions: []appsv1.DeploymentCondition{{
					Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded"}}}
				cs.AppsV1().Deployments("prod").UpdateStatus(ctx, d, metav1.UpdateOptions{})
			}
		}
	}()
	cfg := e.config([]agent.Template{{Destination: filepath.Join(e.dir, "db.env"), Contents: dbEnv}}, agent.Action{Kubernetes: mpAction})
	cfg.Kubernetes = apps{cs}
	a, _ := e.start(cfg)
	testenv.WaitFor(t, 10*time.Second, func() bool {
		return strings.Contains(scrape(t, a), `graft_agent_reloads_total{kind="kubernetes",outcome="failed"} 1`)
	})
	if n := len(patches(cs)); n != 1 {
		t.Fatalf("%d patches, want 1: the failed rollout was retried", n)
	}
}

// scrape returns the agent's /metrics.
func scrape(t *testing.T, a *agent.Agent) string {
	t.Helper()
	resp, err := http.Get("http://" + a.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// Every problem of a kubernetes action is reported, each saying what to
// do; a good one passes.
func TestKubernetesActionProblems(t *testing.T) {
	for _, tc := range []struct {
		name   string
		action agent.Action
		want   string // "" for none
	}{
		{"good", agent.Action{Kubernetes: &agent.KubernetesAction{Deployment: "message-processor", Namespace: "prod", Timeout: time.Minute}}, ""},
		{"no workload", agent.Action{Kubernetes: &agent.KubernetesAction{Namespace: "prod"}}, "reload[0]: kubernetes: give exactly one of deployment, statefulset and daemonset"},
		{"two workloads", agent.Action{Kubernetes: &agent.KubernetesAction{Deployment: "a", StatefulSet: "b"}}, "reload[0]: kubernetes: give exactly one of deployment, statefulset and daemonset"},
		{"bad deployment name", agent.Action{Kubernetes: &agent.KubernetesAction{Deployment: "Message_Processor"}}, `reload[0]: kubernetes.deployment "Message_Processor": want the workload's name`},
		{"bad statefulset name", agent.Action{Kubernetes: &agent.KubernetesAction{StatefulSet: "db/0"}}, `kubernetes.statefulset "db/0"`},
		{"bad namespace", agent.Action{Kubernetes: &agent.KubernetesAction{Deployment: "mp", Namespace: "prod.eu"}}, `kubernetes.namespace "prod.eu": want a namespace name`},
		{"negative timeout", agent.Action{Kubernetes: &agent.KubernetesAction{Deployment: "mp", Timeout: -time.Second}}, "kubernetes.timeout must not be negative"},
		{"with another kind", agent.Action{Command: []string{"true"}, Kubernetes: &agent.KubernetesAction{Deployment: "mp"}}, "reload[0]: give exactly one of signal, http, command, docker and kubernetes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := agent.DefaultConfig()
			cfg.App, cfg.TokenFile = "message-processor", "/token"
			cfg.Templates = []agent.Template{{Destination: "/tmp/x", Contents: "x"}}
			cfg.Reload = []agent.Action{tc.action}
			err := cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("a good action refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

// The action's keys in the configuration file.
func TestKubernetesActionFromYAML(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte(`app: message-processor
token_file: /token
templates: [{destination: /tmp/db.env, contents: x}]
reload:
  - kubernetes: {deployment: message-processor, namespace: prod, kubeconfig: /etc/kube/config, timeout: 2m}
  - kubernetes: {statefulset: db}
  - kubernetes: {daemonset: node-agent}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := agent.Flags(pflag.NewFlagSet("agent", pflag.ContinueOnError))(file, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	var got []agent.KubernetesAction
	for _, a := range cfg.Reload {
		got = append(got, *a.Kubernetes)
	}
	want := []agent.KubernetesAction{
		{Deployment: "message-processor", Namespace: "prod", Kubeconfig: "/etc/kube/config", Timeout: 2 * time.Minute},
		{StatefulSet: "db"}, {DaemonSet: "node-agent"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("kubernetes actions = %+v, want %+v", got, want)
	}
}
