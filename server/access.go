package server

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"

	"github.com/graft-sh/graft/acl"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/store"
)

// rpcAccess is what one rpc does, for authorization, path checks and
// audit. accessTable has one for every rpc graftd serves; an rpc without
// one is refused, and a test fails for any rpc in proto/ that lacks one.
type rpcAccess struct {
	action acl.Action
	// path returns the request field that holds the path the action is
	// checked on; nil for admin rpcs (checked on /) and for rpcs whose
	// handler checks per item without a request path.
	path func(req any) string
	// verb names the rpc in path errors ("get /x: invalid path: ...");
	// with it set, the path is checked for canonical form before any
	// policy sees it. key says the path must be a key, not the root.
	verb string
	key  bool
	// write rpcs are audited before they run (an audit failure stops
	// them) and again with their outcome; dryRun, when set, says that a
	// request only plans and so is a read.
	write  bool
	dryRun func(req any) bool
	// perItem rpcs are authorized by their handler path by path
	// (listings, watches, prefix restores, rules); the caller only ever
	// sees paths it may see.
	perItem bool
	// below, with perItem, still refuses the whole request when the
	// caller may do the action nowhere at or below the path.
	below bool
	// anyone may make the rpc once authenticated (WhoAmI).
	anyone bool
	// value returns the written value, whose HMAC goes into the audit
	// record.
	value func(req any) []byte
}

// field adapts a generated getter, such as (*graftv1.GetRequest).GetPath,
// to the table.
func field[R any, V any](get func(R) V) func(any) V {
	return func(req any) V { return get(req.(R)) }
}

// treeValue is what the audit's HMAC of a PutTree covers: its keys and
// values in key order, each length-prefixed.
func treeValue(req *graftv1.PutTreeRequest) []byte {
	var b []byte
	for _, k := range slices.Sorted(maps.Keys(req.GetValues())) {
		v := req.GetValues()[k]
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	return b
}

// adminPath is the path admin actions are checked against.
const adminPath = "/"

var (
	adminRead  = rpcAccess{action: acl.ActionAdmin}
	adminWrite = rpcAccess{action: acl.ActionAdmin, write: true}
)

// accessTable is every rpc's access rule, by full method name.
var accessTable = map[string]rpcAccess{
	graftv1.KVService_Get_FullMethodName:     {action: acl.ActionRead, path: field((*graftv1.GetRequest).GetPath), verb: "get", key: true},
	graftv1.KVService_History_FullMethodName: {action: acl.ActionRead, path: field((*graftv1.HistoryRequest).GetPath), verb: "history", key: true},
	graftv1.KVService_Put_FullMethodName: {action: acl.ActionWrite, path: field((*graftv1.PutRequest).GetPath), verb: "put", key: true, write: true,
		value: field((*graftv1.PutRequest).GetValue)},
	// PutTree's handler checks write on every path before it writes any.
	graftv1.KVService_PutTree_FullMethodName: {action: acl.ActionWrite, path: field((*graftv1.PutTreeRequest).GetPath), verb: "put", key: true, write: true, perItem: true, below: true,
		value: field(treeValue)},
	graftv1.KVService_Delete_FullMethodName:  {action: acl.ActionDelete, path: field((*graftv1.DeleteRequest).GetPath), verb: "delete", key: true, write: true},
	graftv1.KVService_Restore_FullMethodName: {action: acl.ActionWrite, path: field((*graftv1.RestoreRequest).GetPath), verb: "restore", key: true, write: true},
	graftv1.KVService_RestorePrefix_FullMethodName: {action: acl.ActionWrite, path: field((*graftv1.RestorePrefixRequest).GetPrefix), verb: "restore", write: true, perItem: true, below: true,
		dryRun: field((*graftv1.RestorePrefixRequest).GetDryRun)},
	graftv1.KVService_ReadTree_FullMethodName: {action: acl.ActionRead, path: field((*graftv1.ReadTreeRequest).GetPath), verb: "read", key: true, perItem: true, below: true},
	graftv1.KVService_List_FullMethodName:     {action: acl.ActionList, path: field((*graftv1.ListRequest).GetPrefix), verb: "list", perItem: true},
	graftv1.KVService_Watch_FullMethodName:    {action: acl.ActionList, path: field((*graftv1.WatchRequest).GetPrefix), verb: "watch", perItem: true},

	graftv1.ReplicationService_Share_FullMethodName: {action: acl.ActionShare, path: field((*graftv1.ShareRequest).GetSource), verb: "share", key: true, write: true},
	// The handler checks share on the rule's source.
	graftv1.ReplicationService_Unshare_FullMethodName: {action: acl.ActionShare, write: true, perItem: true},
	// Rules are shown to who may list their source or a destination;
	// whole to the first, with only its destinations to the others.
	graftv1.ReplicationService_ListRules_FullMethodName:         {action: acl.ActionList, perItem: true},
	graftv1.ReplicationService_GetRule_FullMethodName:           {action: acl.ActionList, perItem: true},
	graftv1.ReplicationService_ReplicationStatus_FullMethodName: {action: acl.ActionRead, path: field((*graftv1.ReplicationStatusRequest).GetPath), verb: "status", key: true},

	// The handler checks report on the report's application tree
	// (/app/<name>) and read on every key it lists.
	graftv1.AgentService_Report_FullMethodName:        {action: acl.ActionReport, perItem: true},
	graftv1.AgentService_ListAgents_FullMethodName:    {action: acl.ActionList, perItem: true},
	graftv1.AgentService_RolloutStatus_FullMethodName: {action: acl.ActionList, path: field((*graftv1.RolloutStatusRequest).GetPath), verb: "rollout status", key: true},

	// Rotations are named, not paths: each handler checks rotate (list
	// for the reads) on the rotation's target, and notes the target in
	// the audit record.
	graftv1.RotationService_CreateRotation_FullMethodName:  {action: acl.ActionRotate, write: true, perItem: true},
	graftv1.RotationService_GetRotation_FullMethodName:     {action: acl.ActionList, perItem: true},
	graftv1.RotationService_ListRotations_FullMethodName:   {action: acl.ActionList, perItem: true},
	graftv1.RotationService_RunRotation_FullMethodName:     {action: acl.ActionRotate, write: true, perItem: true},
	graftv1.RotationService_PauseRotation_FullMethodName:   {action: acl.ActionRotate, write: true, perItem: true},
	graftv1.RotationService_ResumeRotation_FullMethodName:  {action: acl.ActionRotate, write: true, perItem: true},
	graftv1.RotationService_DeleteRotation_FullMethodName:  {action: acl.ActionRotate, write: true, perItem: true},
	graftv1.RotationService_RotationHistory_FullMethodName: {action: acl.ActionList, perItem: true},
	graftv1.RotationService_ClaimRotation_FullMethodName:   {action: acl.ActionRotate, perItem: true},
	graftv1.RotationService_ReleaseRotation_FullMethodName: {action: acl.ActionRotate, perItem: true},
	graftv1.RotationService_AdvanceRotation_FullMethodName: {action: acl.ActionRotate, write: true, perItem: true},

	// Dynamic credentials. PutRole also checks read on the role's admin
	// DSN; Issue follows a copy to its role, which counts only while its
	// author may read the DSN. Lease rpcs name a lease, not a path: the
	// handler lets its holder, who may write its role, and admins act
	// on it, and notes the role in the audit record.
	graftv1.DBCredService_PutRole_FullMethodName:     {action: acl.ActionWrite, path: field((*graftv1.PutRoleRequest).GetPath), verb: "dbcred role put", key: true, write: true},
	graftv1.DBCredService_GetRole_FullMethodName:     {action: acl.ActionRead, path: field((*graftv1.GetRoleRequest).GetPath), verb: "dbcred role get", key: true},
	graftv1.DBCredService_ListRoles_FullMethodName:   {action: acl.ActionList, path: field((*graftv1.ListRolesRequest).GetPrefix), verb: "dbcred role ls", perItem: true},
	graftv1.DBCredService_DeleteRole_FullMethodName:  {action: acl.ActionDelete, path: field((*graftv1.DeleteRoleRequest).GetPath), verb: "dbcred role rm", key: true, write: true},
	graftv1.DBCredService_Issue_FullMethodName:       {action: acl.ActionIssue, path: field((*graftv1.IssueRequest).GetPath), verb: "dbcred issue", key: true, write: true},
	graftv1.LeaseService_ListLeases_FullMethodName:   {action: acl.ActionList, perItem: true},
	graftv1.LeaseService_RenewLease_FullMethodName:   {action: acl.ActionIssue, perItem: true, write: true},
	graftv1.LeaseService_RevokeLease_FullMethodName:  {action: acl.ActionIssue, perItem: true, write: true},
	graftv1.LeaseService_RevokePrefix_FullMethodName: {action: acl.ActionWrite, path: field((*graftv1.RevokePrefixRequest).GetPrefix), verb: "lease revoke", write: true},
	graftv1.LeaseService_SetReaper_FullMethodName:    adminWrite,

	graftv1.TokenService_WhoAmI_FullMethodName:      {anyone: true},
	graftv1.TokenService_CreateToken_FullMethodName: adminWrite,
	graftv1.TokenService_RevokeToken_FullMethodName: adminWrite,
	graftv1.TokenService_ListTokens_FullMethodName:  adminRead,

	graftv1.PolicyService_PutPolicy_FullMethodName:    adminWrite,
	graftv1.PolicyService_DeletePolicy_FullMethodName: adminWrite,
	graftv1.PolicyService_InitPolicies_FullMethodName: adminWrite,
	graftv1.PolicyService_GetPolicy_FullMethodName:    adminRead,
	graftv1.PolicyService_ListPolicies_FullMethodName: adminRead,
	graftv1.PolicyService_CheckPolicy_FullMethodName:  adminRead,

	graftv1.AuditService_QueryAudit_FullMethodName: adminRead,

	graftv1.AdminService_KeyringStatus_FullMethodName:  adminRead,
	graftv1.AdminService_ReencryptSweep_FullMethodName: adminWrite,
}

// request is one call as the table reads it.
type request struct {
	rpcAccess
	path  string
	value []byte
}

// accessOf looks up the rule of an rpc and applies it to a request.
func accessOf(fullMethod string, req any) (request, error) {
	a, ok := accessTable[fullMethod]
	if !ok {
		return request{}, fmt.Errorf("%w: %s has no access rule in graftd; this is a graftd bug, please report it", acl.ErrPermissionDenied, fullMethod)
	}
	r := request{rpcAccess: a, path: adminPath}
	switch {
	case a.path != nil:
		r.path = a.path(req)
	case a.action != acl.ActionAdmin:
		r.path = ""
	}
	if a.dryRun != nil && a.dryRun(req) {
		r.write = false
	}
	if a.value != nil {
		r.value = a.value(req)
	}
	return r, nil
}

// checkPath rejects a non-canonical path before any policy sees it:
// patterns are matched against canonical paths only, so "/app/me/../x"
// never reaches a matcher.
func (r request) checkPath() error {
	if r.verb == "" {
		return nil
	}
	parse := store.ParsePrefix
	if r.key {
		parse = store.ParsePath
	}
	if _, err := parse(r.path); err != nil {
		return fmt.Errorf("%s %s: %w", r.verb, store.ShortPath(r.path), err)
	}
	return nil
}
