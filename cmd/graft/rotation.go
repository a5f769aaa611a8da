package main

import "github.com/spf13/cobra"

// rotationExample is the one example every rotation message refers to.
const rotationExample = `graft rotation create message-processor-pg --driver postgres \
      --admin /dba/passpack/admin/postgres \
      --target /dba/passpack/services/message-processor/postgres \
      --users message-processor-blue,message-processor-green \
      --consumers app:message-processor`

func (a *app) rotationCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "rotation",
		Aliases: []string{"rotations"},
		Short:   "Rotate database credentials blue/green: two users that alternate",
		Long: `A rotation keeps a database credential at a target path (TARGET/user and
TARGET/password) and moves it, run by run, between two database users: the
user consumers do not run gets a new random password, is tested, published,
rolled out to every consumer agent, and only then is the other user retired.
A failed test, an unhealthy consumer or a rollout timeout rolls back to the
old credential. graftd stores the rotation; a graft-agent with rotations: in
its configuration (a rotator) runs it. No command here ever shows a
password.`,
		Args: args(0, 0, "a subcommand"),
	}
	cmd.AddCommand(
		a.rotationCreateCmd(),
		a.rotationRunCmd(),
		a.rotationStatusCmd(),
		a.rotationListCmd(),
		a.rotationHistoryCmd(),
		a.rotationPauseCmd(true),
		a.rotationPauseCmd(false),
		a.rotationRmCmd(),
	)
	return cmd
}
