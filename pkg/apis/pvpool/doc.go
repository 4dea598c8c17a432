// +k8s:deepcopy-gen=package
// +groupName=pvpool.puppet.com

// Package pvpool is the internal version of the pvpool.puppet.com API: Pools of pre-provisioned
// volumes and Checkouts that take one out as a PersistentVolumeClaim.
package pvpool
