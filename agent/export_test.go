package agent

import (
	"context"
	"log/slog"
)

// KubernetesRunner runs action k as an agent does, with client or, when it
// is nil, connecting on the first run and keeping the connection.
func KubernetesRunner(k *KubernetesAction, client KubernetesClient, log *slog.Logger) func(context.Context) error {
	return newKubeRestarter(k, client, log).Run
}
