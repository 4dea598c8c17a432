// +k8s:openapi-gen=true
// +k8s:deepcopy-gen=package
// +k8s:conversion-gen=github.com/pvpool/pvpool/pkg/apis/pvpool
// +k8s:defaulter-gen=TypeMeta
// +groupName=pvpool.puppet.com
// +k8s:openapi-model-package=com.puppet.pvpool.v1alpha1

// Package v1alpha1 is version v1alpha1 of the pvpool.puppet.com API, the version PVPool's YAML is
// written against.
package v1alpha1
