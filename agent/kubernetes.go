package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// KubernetesAction restarts a workload as `kubectl rollout restart` does, by
// stamping its pod template, then waits for the rollout as `kubectl rollout
// status` does. Exactly one of Deployment, StatefulSet and DaemonSet names
// it.
type KubernetesAction struct {
	Deployment  string `yaml:"deployment"`
	StatefulSet string `yaml:"statefulset"`
	DaemonSet   string `yaml:"daemonset"`
	// Namespace defaults to the agent's own (in a pod), the kubeconfig
	// context's, or "default".
	Namespace string `yaml:"namespace"`
	// Kubeconfig is the kubeconfig file to use; without it the agent uses
	// its pod's service account, or else $KUBECONFIG or ~/.kube/config.
	Kubeconfig string `yaml:"kubeconfig"`
	// Timeout bounds the restart and its rollout (default 5m).
	Timeout time.Duration `yaml:"timeout"`
}

// What the restart writes, so that a GitOps tool can tell graft-agent's
// restarts from drift: its own annotation (not kubectl's restartedAt) and
// its own field manager, which both show in the object's managedFields.
const (
	restartedAtAnnotation = "graft.sh/restartedAt"
	fieldManager          = "graft-agent"
)

const (
	defaultRolloutTimeout = 5 * time.Minute
	// serviceAccountNamespace holds the namespace of the pod the agent runs
	// in.
	serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
)

// errRolloutTimeout ends a rollout wait that took longer than its timeout.
var errRolloutTimeout = errors.New("rollout timeout")

// finalError is a reload failure that trying again would not mend, only
// repeat at length: a rollout that failed, or did not finish in time.
type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }

// isFinal reports whether err says not to retry.
func isFinal(err error) bool {
	var f *finalError
	return errors.As(err, &f)
}

func (k *KubernetesAction) validate(where string, add func(string, ...any)) {
	n := 0
	for _, w := range []struct{ key, name string }{{"deployment", k.Deployment}, {"statefulset", k.StatefulSet}, {"daemonset", k.DaemonSet}} {
		if w.name == "" {
			continue
		}
		n++
		if errs := validation.IsDNS1123Subdomain(w.name); len(errs) > 0 {
			add("%s: kubernetes.%s %q: want the workload's name, lowercase letters, digits, - and . (%s)", where, w.key, w.name, errs[0])
		}
	}
	if n != 1 {
		add("%s: kubernetes: give exactly one of deployment, statefulset and daemonset, the workload to restart", where)
	}
	if k.Namespace != "" {
		if errs := validation.IsDNS1123Label(k.Namespace); len(errs) > 0 {
			add("%s: kubernetes.namespace %q: want a namespace name, lowercase letters, digits and - (%s)", where, k.Namespace, errs[0])
		}
	}
	if k.Timeout < 0 {
		add("%s: kubernetes.timeout must not be negative (leave it out for %s)", where, defaultRolloutTimeout)
	}
}

// kubeRestarter runs one kubernetes action. It connects on first use and
// keeps the client for the reloads after.
type kubeRestarter struct {
	action    *KubernetesAction
	log       *slog.Logger
	client    KubernetesClient
	namespace string // the connection's default namespace
}

func newKubeRestarter(k *KubernetesAction, client KubernetesClient, log *slog.Logger) *kubeRestarter {
	r := &kubeRestarter{action: k, client: client, log: log}
	if client != nil {
		r.namespace = podNamespace()
	}
	return r
}

// Kind is kubernetes.
func (*kubeRestarter) Kind() string { return "kubernetes" }

// Close does nothing: client-go's REST client holds nothing to release.
func (*kubeRestarter) Close() {}

// Run restarts the workload and waits for its rollout.
func (r *kubeRestarter) Run(ctx context.Context) error {
	if r.client == nil {
		c, ns, err := connectKubernetes(r.action.Kubeconfig, r.log)
		if err != nil {
			return err
		}
		r.client, r.namespace = c, ns
	}
	k := r.action
	w := workload{namespace: k.Namespace, timeout: k.Timeout}
	if w.namespace == "" {
		w.namespace = r.namespace
	}
	if w.timeout <= 0 {
		w.timeout = defaultRolloutTimeout
	}
	ctx, cancel := context.WithTimeoutCause(ctx, w.timeout, errRolloutTimeout)
	defer cancel()
	var err error
	switch {
	case k.Deployment != "":
		w.kind, w.name = "deployment", k.Deployment
		err = restart(ctx, r.log, r.client.Deployments(w.namespace), w, deploymentRefusal, deploymentProgress)
	case k.StatefulSet != "":
		w.kind, w.name = "statefulset", k.StatefulSet
		err = restart(ctx, r.log, r.client.StatefulSets(w.namespace), w, statefulSetRefusal, statefulSetProgress)
	default:
		w.kind, w.name = "daemonset", k.DaemonSet
		err = restart(ctx, r.log, r.client.DaemonSets(w.namespace), w, daemonSetRefusal, daemonSetProgress)
	}
	if err != nil && !isFinal(err) && errors.Is(context.Cause(ctx), errRolloutTimeout) {
		// A cluster that took the whole timeout to answer: another try
		// would hold the agent as long again.
		err = &finalError{fmt.Errorf("%w (no answer within kubernetes.timeout, %s)", err, w.timeout)}
	}
	return err
}

// connectKubernetes returns a client of the cluster and the namespace to
// default to: from kubeconfig if given, else the pod's service account,
// else $KUBECONFIG or ~/.kube/config. The cluster's warnings go to log.
func connectKubernetes(kubeconfig string, log *slog.Logger) (KubernetesClient, string, error) {
	if kubeconfig == "" {
		rc, err := rest.InClusterConfig()
		switch {
		case err == nil:
			c, err := newRESTClient(rc, log)
			if err != nil {
				return nil, "", fmt.Errorf("kubernetes: in-cluster client: %w", err)
			}
			return c, podNamespace(), nil
		case !errors.Is(err, rest.ErrNotInCluster):
			return nil, "", fmt.Errorf("kubernetes: the pod's service account: %w (is its token mounted? automountServiceAccountToken must not be false)", err)
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	rc, err := cc.ClientConfig()
	switch {
	case clientcmd.IsEmptyConfig(err):
		return nil, "", errors.New("kubernetes: no cluster to talk to: the agent runs in no pod with a service account and finds no kubeconfig ($KUBECONFIG, ~/.kube/config); set kubernetes.kubeconfig")
	case err != nil:
		return nil, "", fmt.Errorf("kubernetes: kubeconfig: %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes: kubeconfig: %w", err)
	}
	c, err := newRESTClient(rc, log)
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes: client from the kubeconfig: %w", err)
	}
	return c, ns, nil
}

// warnings logs what the cluster warns of (a deprecated API, say), which
// client-go would print to stderr, outside the agent's log.
type warnings struct{ log *slog.Logger }

func (w warnings) HandleWarningHeader(code int, agent, text string) {
	if code == 299 && text != "" {
		w.log.Warn("the cluster warns", "warning", text)
	}
}

// podNamespace is the namespace of the pod the agent runs in, or
// "default".
func podNamespace() string {
	if data, err := os.ReadFile(serviceAccountNamespace); err == nil {
		if ns := strings.TrimSpace(string(data)); ns != "" {
			return ns
		}
	}
	return metav1.NamespaceDefault
}

// workload names what one restart acts on, for its requests and errors.
type workload struct {
	kind, name, namespace string
	timeout               time.Duration
}

func (w workload) String() string { return w.kind + " " + w.namespace + "/" + w.name }

// apiError says what to do about a failed request.
func (w workload) apiError(verb string, err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("kubernetes: %s %s: no %s %q in namespace %s: check the name and kubernetes.namespace: %w", verb, w, w.kind, w.name, w.namespace, err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("kubernetes: %s %s: %w; the agent's identity needs get, patch and watch on %ss in namespace %s (a Role bound to its service account)", verb, w, err, w.kind, w.namespace)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("kubernetes: %s %s: the cluster refused the agent's credentials (its service account token or the kubeconfig's user): %w", verb, w, err)
	}
	return fmt.Errorf("kubernetes: %s %s: %w", verb, w, err)
}

// object is what a restart reads of any workload.
type object interface {
	runtime.Object
	GetName() string
	GetGeneration() int64
	GetResourceVersion() string
}

// KubernetesClient is what the kubernetes reload action uses of a
// cluster's apps/v1 API. The agent builds one on client-go's REST client;
// a test can wrap client-go's fake clientset (its typed clients are
// WorkloadClients).
type KubernetesClient interface {
	Deployments(namespace string) WorkloadClient[*appsv1.Deployment]
	StatefulSets(namespace string) WorkloadClient[*appsv1.StatefulSet]
	DaemonSets(namespace string) WorkloadClient[*appsv1.DaemonSet]
}

// WorkloadClient is the part of one workload kind's API a restart uses, as
// client-go's typed clients declare it.
type WorkloadClient[T object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// restClient is a KubernetesClient on client-go's REST client with a
// scheme of apps/v1 alone. client-go's clientset, typed clients included,
// registers every API group of Kubernetes, which made graft-agent some
// 20 MB larger for the three kinds it restarts.
type restClient struct {
	c      rest.Interface
	params runtime.ParameterCodec
}

var _ KubernetesClient = restClient{}

func newRESTClient(rc *rest.Config, log *slog.Logger) (KubernetesClient, error) {
	scheme := runtime.NewScheme()
	if err := appsv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	// Status, the options and watch events in the core version, as the
	// clientset's scheme has them: errors and watches decode through it.
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	cfg := rest.CopyConfig(rc)
	cfg.GroupVersion = &appsv1.SchemeGroupVersion
	cfg.APIPath = "/apis"
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	cfg.UserAgent = fieldManager
	cfg.WarningHandler = warnings{log}
	c, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, err
	}
	return restClient{c: c, params: runtime.NewParameterCodec(scheme)}, nil
}

func (r restClient) Deployments(ns string) WorkloadClient[*appsv1.Deployment] {
	return restWorkloads[*appsv1.Deployment]{r, ns, "deployments", func() *appsv1.Deployment { return &appsv1.Deployment{} }}
}

func (r restClient) StatefulSets(ns string) WorkloadClient[*appsv1.StatefulSet] {
	return restWorkloads[*appsv1.StatefulSet]{r, ns, "statefulsets", func() *appsv1.StatefulSet { return &appsv1.StatefulSet{} }}
}

func (r restClient) DaemonSets(ns string) WorkloadClient[*appsv1.DaemonSet] {
	return restWorkloads[*appsv1.DaemonSet]{r, ns, "daemonsets", func() *appsv1.DaemonSet { return &appsv1.DaemonSet{} }}
}

// restWorkloads is one workload kind's API in one namespace, requested as
// client-go's generated clients request it.
type restWorkloads[T object] struct {
	api                 restClient
	namespace, resource string
	alloc               func() T
}

func (w restWorkloads[T]) Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error) {
	obj := w.alloc()
	if err := w.api.c.Get().Namespace(w.namespace).Resource(w.resource).Name(name).
		VersionedParams(&opts, w.api.params).Do(ctx).Into(obj); err != nil {
		var zero T
		return zero, err
	}
	return obj, nil
}

func (w restWorkloads[T]) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error) {
	obj := w.alloc()
	if err := w.api.c.Patch(pt).Namespace(w.namespace).Resource(w.resource).Name(name).SubResource(subresources...).
		VersionedParams(&opts, w.api.params).Body(data).Do(ctx).Into(obj); err != nil {
		var zero T
		return zero, err
	}
	return obj, nil
}

func (w restWorkloads[T]) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return w.api.c.Get().Namespace(w.namespace).Resource(w.resource).VersionedParams(&opts, w.api.params).Watch(ctx)
}

// restart stamps the workload's pod template with the time, which makes
// its controller replace every pod, then waits for the rollout. refuse
// says why a workload cannot be restarted this way; progress says whether
// its rollout of generation gen is done, what it waits for, or why it
// failed.
func restart[T object](ctx context.Context, log *slog.Logger, c WorkloadClient[T], w workload,
	refuse func(T) error, progress func(obj T, gen int64) (done bool, waiting string, err error)) error {
	cur, err := c.Get(ctx, w.name, metav1.GetOptions{})
	if err != nil {
		return w.apiError("get", err)
	}
	if err := refuse(cur); err != nil {
		return &finalError{fmt.Errorf("kubernetes: %s: %w", w, err)}
	}
	// Nanoseconds, so that two restarts within a second still change the
	// template: an unchanged one would roll nothing out, and the wait would
	// find the previous rollout complete.
	patch := fmt.Appendf(nil, `{"spec":{"template":{"metadata":{"annotations":{%q:%q}}}}}`,
		restartedAtAnnotation, time.Now().UTC().Format(time.RFC3339Nano))
	patched, err := c.Patch(ctx, w.name, types.StrategicMergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	if err != nil {
		return w.apiError("patch", err)
	}
	log.Info("restart requested; waiting for the rollout", "workload", w.String(), "generation", patched.GetGeneration(), "timeout", w.timeout)
	return waitRollout(ctx, c, w, patched, progress)
}

// waitRollout follows the workload from the patch on until progress says
// the rollout of the patch's generation is done or failed, or ctx ends. A
// watch that ends is resumed from the last version seen; one whose version
// is too old to resume from starts again from a fresh read.
func waitRollout[T object](ctx context.Context, c WorkloadClient[T], w workload, patched T,
	progress func(obj T, gen int64) (bool, string, error)) error {
	gen := patched.GetGeneration()
	waiting := ""
	check := func(obj T) (bool, error) {
		done, msg, err := progress(obj, gen)
		if err != nil {
			return false, &finalError{fmt.Errorf("kubernetes: %s: %w", w, err)}
		}
		waiting = msg
		return done, nil
	}
	ended := func() error {
		if errors.Is(context.Cause(ctx), errRolloutTimeout) {
			return &finalError{fmt.Errorf("kubernetes: %s: the rollout did not complete within %s (%s); see kubectl rollout status %s/%s -n %s, or raise kubernetes.timeout",
				w, w.timeout, waiting, w.kind, w.name, w.namespace)}
		}
		return ctx.Err()
	}
	if done, err := check(patched); done || err != nil {
		return err
	}
	rv := patched.GetResourceVersion()
	for {
		if rv == "" {
			cur, err := c.Get(ctx, w.name, metav1.GetOptions{})
			switch {
			case ctx.Err() != nil:
				return ended()
			case apierrors.IsNotFound(err):
				return &finalError{fmt.Errorf("kubernetes: %s was deleted during its rollout", w)}
			case err != nil:
				return w.apiError("get", err)
			}
			if done, err := check(cur); done || err != nil {
				return err
			}
			rv = cur.GetResourceVersion()
		}
		wt, err := c.Watch(ctx, metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("metadata.name", w.name).String(),
			ResourceVersion: rv,
		})
		if err != nil {
			if ctx.Err() != nil {
				return ended()
			}
			return w.apiError("watch", err)
		}
		next, done, err := follow(ctx, wt, w, rv, check)
		wt.Stop()
		if done || err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ended()
		}
		if next == rv {
			// The watch ended without news: do not spin on a server that
			// closes watches at once.
			select {
			case <-ctx.Done():
				return ended()
			case <-time.After(time.Second):
			}
		}
		rv = next
	}
}

// follow reads one watch, started at resource version rv, until check
// says done, it fails, the watch ends or ctx ends, and returns the
// resource version to resume from ("": too old, read afresh).
func follow[T object](ctx context.Context, wt watch.Interface, w workload, rv string, check func(T) (bool, error)) (string, bool, error) {
	for {
		select {
		case <-ctx.Done():
			return rv, false, nil
		case ev, ok := <-wt.ResultChan():
			if !ok {
				return rv, false, nil
			}
			switch ev.Type {
			case watch.Error:
				err := apierrors.FromObject(ev.Object)
				if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
					return "", false, nil
				}
				return rv, false, w.apiError("watch", err)
			case watch.Bookmark:
				if obj, ok := ev.Object.(T); ok {
					rv = obj.GetResourceVersion()
				}
				continue
			}
			obj, ok := ev.Object.(T)
			if !ok || obj.GetName() != w.name {
				continue
			}
			if ev.Type == watch.Deleted {
				return rv, false, &finalError{fmt.Errorf("kubernetes: %s was deleted during its rollout", w)}
			}
			rv = obj.GetResourceVersion()
			if done, err := check(obj); done || err != nil {
				return rv, done, err
			}
		}
	}
}

func deploymentRefusal(d *appsv1.Deployment) error {
	if d.Spec.Paused {
		return errors.New("the deployment is paused and would not roll out; resume it (kubectl rollout resume) or leave it out of reload")
	}
	return nil
}

// deploymentProgress reads a deployment's rollout as kubectl rollout status
// does.
func deploymentProgress(d *appsv1.Deployment, gen int64) (bool, string, error) {
	st := d.Status
	if st.ObservedGeneration < max(gen, d.Generation) {
		return false, "waiting for the deployment controller to observe the restart", nil
	}
	for _, c := range st.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Reason == "ProgressDeadlineExceeded" {
			return false, "", fmt.Errorf("the rollout exceeded its progress deadline (%s): its new pods do not become available; see kubectl rollout status and the pods' events", c.Message)
		}
	}
	if d.Spec.Replicas != nil && st.UpdatedReplicas < *d.Spec.Replicas {
		return false, fmt.Sprintf("%d of %d new replicas updated", st.UpdatedReplicas, *d.Spec.Replicas), nil
	}
	if st.Replicas > st.UpdatedReplicas {
		return false, fmt.Sprintf("%d old replicas pending termination", st.Replicas-st.UpdatedReplicas), nil
	}
	if st.AvailableReplicas < st.UpdatedReplicas {
		return false, fmt.Sprintf("%d of %d updated replicas available", st.AvailableReplicas, st.UpdatedReplicas), nil
	}
	return true, "", nil
}

func statefulSetRefusal(s *appsv1.StatefulSet) error {
	if t := s.Spec.UpdateStrategy.Type; t != "" && t != appsv1.RollingUpdateStatefulSetStrategyType {
		return fmt.Errorf("updateStrategy %s replaces pods only when they are deleted, so a restart would roll nothing out; use RollingUpdate", t)
	}
	return nil
}

// statefulSetProgress reads a statefulset's rollout as kubectl rollout
// status does; with a partition, the pods below it are not updated.
func statefulSetProgress(s *appsv1.StatefulSet, gen int64) (bool, string, error) {
	st := s.Status
	if st.ObservedGeneration < max(gen, s.Generation) {
		return false, "waiting for the statefulset controller to observe the restart", nil
	}
	if s.Spec.Replicas == nil {
		return true, "", nil
	}
	replicas := *s.Spec.Replicas
	if st.ReadyReplicas < replicas {
		return false, fmt.Sprintf("%d of %d pods ready", st.ReadyReplicas, replicas), nil
	}
	var partition int32
	if ru := s.Spec.UpdateStrategy.RollingUpdate; ru != nil && ru.Partition != nil {
		partition = *ru.Partition
	}
	if st.UpdatedReplicas < replicas-partition {
		return false, fmt.Sprintf("%d of %d pods updated", st.UpdatedReplicas, replicas-partition), nil
	}
	if partition == 0 && st.UpdateRevision != st.CurrentRevision {
		return false, fmt.Sprintf("waiting for revision %s to become current", st.UpdateRevision), nil
	}
	return true, "", nil
}

func daemonSetRefusal(d *appsv1.DaemonSet) error {
	if t := d.Spec.UpdateStrategy.Type; t != "" && t != appsv1.RollingUpdateDaemonSetStrategyType {
		return fmt.Errorf("updateStrategy %s replaces pods only when they are deleted, so a restart would roll nothing out; use RollingUpdate", t)
	}
	return nil
}

// daemonSetProgress reads a daemonset's rollout as kubectl rollout status
// does.
func daemonSetProgress(d *appsv1.DaemonSet, gen int64) (bool, string, error) {
	st := d.Status
	if st.ObservedGeneration < max(gen, d.Generation) {
		return false, "waiting for the daemonset controller to observe the restart", nil
	}
	if st.UpdatedNumberScheduled < st.DesiredNumberScheduled {
		return false, fmt.Sprintf("%d of %d nodes run an updated pod", st.UpdatedNumberScheduled, st.DesiredNumberScheduled), nil
	}
	if st.NumberAvailable < st.DesiredNumberScheduled {
		return false, fmt.Sprintf("%d of %d updated pods available", st.NumberAvailable, st.DesiredNumberScheduled), nil
	}
	return true, "", nil
}
