package agent

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The rollout of the restart's generation is done as kubectl rollout status
// judges it, and never from the status of the generation before.
func TestDeploymentProgress(t *testing.T) {
	three := int32(3)
	dep := func(gen int64, st appsv1.DeploymentStatus) *appsv1.Deployment {
		return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "mp", Generation: gen},
			Spec: appsv1.DeploymentSpec{Replicas: &three}, Status: st}
	}
	complete := appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 3}
	deadline := complete
	deadline.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse,
		Reason: "ProgressDeadlineExceeded", Message: `ReplicaSet "mp-2" has timed out progressing.`}}
	progressing := complete
	progressing.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: "NewReplicaSetAvailable"}}
	for _, tc := range []struct {
		name     string
		d        *appsv1.Deployment
		gen      int64
		wantDone bool
		want     string // what it waits for, or the error
	}{
		{"the previous generation's complete status", dep(2, appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 3}), 2, false, "observe the restart"},
		{"a patch response older than the restart", dep(1, complete), 3, false, "observe the restart"},
		{"new replicas still coming", dep(2, appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 4, UpdatedReplicas: 1, AvailableReplicas: 3}), 2, false, "1 of 3 new replicas updated"},
		{"old replicas still running", dep(2, appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 4, UpdatedReplicas: 3, AvailableReplicas: 3}), 2, false, "1 old replicas pending termination"},
		{"updated replicas not yet available", dep(2, appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 2}), 2, false, "2 of 3 updated replicas available"},
		{"complete", dep(2, complete), 2, true, ""},
		{"complete and progressing", dep(2, progressing), 2, true, ""},
		{"progress deadline exceeded", dep(2, deadline), 2, false, `exceeded its progress deadline (ReplicaSet "mp-2" has timed out progressing.)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done, waiting, err := deploymentProgress(tc.d, tc.gen)
			got := waiting
			if err != nil {
				got = err.Error()
			}
			if done != tc.wantDone || !strings.Contains(got, tc.want) || (tc.want == "") != (got == "") {
				t.Fatalf("deploymentProgress = %v, %q; want %v, %q", done, got, tc.wantDone, tc.want)
			}
		})
	}
}

func TestStatefulSetProgress(t *testing.T) {
	three, one := int32(3), int32(1)
	sts := func(partition *int32, st appsv1.StatefulSetStatus) *appsv1.StatefulSet {
		s := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db", Generation: 2}, Spec: appsv1.StatefulSetSpec{Replicas: &three}, Status: st}
		if partition != nil {
			s.Spec.UpdateStrategy.RollingUpdate = &appsv1.RollingUpdateStatefulSetStrategy{Partition: partition}
		}
		return s
	}
	for _, tc := range []struct {
		name     string
		s        *appsv1.StatefulSet
		wantDone bool
		want     string
	}{
		{"not observed", sts(nil, appsv1.StatefulSetStatus{ObservedGeneration: 1, ReadyReplicas: 3, UpdatedReplicas: 3, CurrentRevision: "r1", UpdateRevision: "r1"}), false, "observe the restart"},
		{"pods not ready", sts(nil, appsv1.StatefulSetStatus{ObservedGeneration: 2, ReadyReplicas: 2, UpdatedReplicas: 3, CurrentRevision: "r1", UpdateRevision: "r2"}), false, "2 of 3 pods ready"},
		{"pods not updated", sts(nil, appsv1.StatefulSetStatus{ObservedGeneration: 2, ReadyReplicas: 3, UpdatedReplicas: 1, CurrentRevision: "r1", UpdateRevision: "r2"}), false, "1 of 3 pods updated"},
		{"revision not current", sts(nil, appsv1.StatefulSetStatus{ObservedGeneration: 2, ReadyReplicas: 3, UpdatedReplicas: 3, CurrentRevision: "r1", UpdateRevision: "r2"}), false, "revision r2 to become current"},
		{"complete", sts(nil, appsv1.StatefulSetStatus{ObservedGeneration: 2, ReadyReplicas: 3, UpdatedReplicas: 3, CurrentRevision: "r2", UpdateRevision: "r2"}), true, ""},
		{"partition: the pods above it updated", sts(&one, appsv1.StatefulSetStatus{ObservedGeneration: 2, ReadyReplicas: 3, UpdatedReplicas: 2, CurrentRevision: "r1", UpdateRevision: "r2"}), true, ""},
		{"partition: not yet", sts(&one, appsv1.StatefulSetStatus{ObservedGeneration: 2, ReadyReplicas: 3, UpdatedReplicas: 1, CurrentRevision: "r1", UpdateRevision: "r2"}), false, "1 of 2 pods updated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done, waiting, err := statefulSetProgress(tc.s, 2)
			if err != nil || done != tc.wantDone || !strings.Contains(waiting, tc.want) || (tc.want == "") != (waiting == "") {
				t.Fatalf("statefulSetProgress = %v, %q, %v; want %v, %q", done, waiting, err, tc.wantDone, tc.want)
			}
		})
	}
}

func TestDaemonSetProgress(t *testing.T) {
	ds := func(st appsv1.DaemonSetStatus) *appsv1.DaemonSet {
		return &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "node-agent", Generation: 2}, Status: st}
	}
	for _, tc := range []struct {
		name     string
		d        *appsv1.DaemonSet
		wantDone bool
		want     string
	}{
		{"not observed", ds(appsv1.DaemonSetStatus{ObservedGeneration: 1, DesiredNumberScheduled: 2, UpdatedNumberScheduled: 2, NumberAvailable: 2}), false, "observe the restart"},
		{"nodes not updated", ds(appsv1.DaemonSetStatus{ObservedGeneration: 2, DesiredNumberScheduled: 2, UpdatedNumberScheduled: 1, NumberAvailable: 2}), false, "1 of 2 nodes run an updated pod"},
		{"updated pods not available", ds(appsv1.DaemonSetStatus{ObservedGeneration: 2, DesiredNumberScheduled: 2, UpdatedNumberScheduled: 2, NumberAvailable: 1}), false, "1 of 2 updated pods available"},
		{"complete", ds(appsv1.DaemonSetStatus{ObservedGeneration: 2, DesiredNumberScheduled: 2, UpdatedNumberScheduled: 2, NumberAvailable: 2}), true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done, waiting, err := daemonSetProgress(tc.d, 2)
			if err != nil || done != tc.wantDone || !strings.Contains(waiting, tc.want) || (tc.want == "") != (waiting == "") {
				t.Fatalf("daemonSetProgress = %v, %q, %v; want %v, %q", done, waiting, err, tc.wantDone, tc.want)
			}
		})
	}
}
