package rotation

import "testing"

// The Runner's next step is always one Check lets follow: both read the
// one order in state.go.
func TestRunnerNextStepIsOneCheckAllows(t *testing.T) {
	tests := []struct{ step, want string }{
		{StepKey, StepTest},
		{StepTest, StepPublish},
		{StepPublish, StepRollout},
		{StepRollout, StepRetire},
		{StepRetire, ""},
		{StepRollbackPublish, StepRollbackRollout},
		{StepRollbackRollout, StepRollbackDisable},
		{StepRollbackDisable, ""},
		{"unknown", ""},
	}
	for _, tt := range tests {
		got := nextStep(tt.step)
		if got != tt.want {
			t.Errorf("nextStep(%q) = %q, want %q", tt.step, got, tt.want)
		}
		if got != "" && !follows(tt.step, got) {
			t.Errorf("Check does not let %s follow %s", got, tt.step)
		}
	}
}
