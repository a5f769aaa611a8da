package sdk

import (
	"context"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// KeyringStatus returns the id of the key that encrypts new writes and the
// ids of every key graftd can decrypt with, ascending. Root only.
func (c *Client) KeyringStatus(ctx context.Context) (primary uint32, ids []uint32, err error) {
	resp, err := c.admin.KeyringStatus(ctx, &graftv1.KeyringStatusRequest{})
	if err != nil {
		return 0, nil, wrap(ctx, err)
	}
	return resp.GetPrimaryKeyId(), resp.GetKeyIds(), nil
}

// ReencryptSweep makes graftd reload its keyring file and re-encrypt every
// stored value not yet under the primary key. Root only.
func (c *Client) ReencryptSweep(ctx context.Context) (SweepResult, error) {
	resp, err := c.admin.ReencryptSweep(ctx, &graftv1.ReencryptSweepRequest{})
	if err != nil {
		return SweepResult{}, wrap(ctx, err)
	}
	return SweepResult{
		PrimaryKeyID: resp.GetPrimaryKeyId(),
		Examined:     resp.GetExamined(),
		Reencrypted:  resp.GetReencrypted(),
	}, nil
}
