package checkout

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/endpoints/request"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
)

// UseVerb is the RBAC verb a user needs on a pool to check a volume out of it.
const UseVerb = "use"

// authorizeUse asks authz whether the user of the request may use the pool checkout refers to. A pool
// may live in another namespace than the checkout, so permission on checkouts alone is not enough.
func authorizeUse(ctx context.Context, authz authorizer.Authorizer, checkout *pvpool.Checkout) error {
	if authz == nil {
		return nil
	}
	poolNamespace, poolName := PoolNamespace(checkout), checkout.Spec.PoolRef.Name
	forbidden := func(reason string) error {
		return apierrors.NewForbidden(pvpool.Resource("pools"), poolName, fmt.Errorf("%s", reason))
	}
	user, ok := request.UserFrom(ctx)
	if !ok {
		return forbidden(fmt.Sprintf("no user in the request, so nobody may use pool %s/%s", poolNamespace, poolName))
	}
	decision, reason, err := authz.Authorize(ctx, authorizer.AttributesRecord{
		User:            user,
		Verb:            UseVerb,
		Namespace:       poolNamespace,
		APIGroup:        pvpool.GroupName,
		APIVersion:      "v1alpha1",
		Resource:        "pools",
		Name:            poolName,
		ResourceRequest: true,
	})
	if decision == authorizer.DecisionAllow {
		return nil
	}
	message := fmt.Sprintf("User %q cannot use pool %s/%s (verb %q on resource pools.%s)", user.GetName(), poolNamespace, poolName, UseVerb, pvpool.GroupName)
	if reason != "" {
		message += ": " + reason
	}
	if err != nil {
		message += fmt.Sprintf(" (authorizer error: %v)", err)
	}
	return forbidden(message)
}
