// Command models-schema prints the OpenAPI v2 definitions of pvpool's types, the schema
// applyconfiguration-gen needs to generate structured-merge-diff aware apply configurations.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/kube-openapi/pkg/common"
	"k8s.io/kube-openapi/pkg/validation/spec"

	"github.com/pvpool/pvpool/pkg/generated/openapi"
)

func main() {
	if err := printModels(); err != nil {
		fmt.Fprintf(os.Stderr, "models-schema: %v\n", err)
		os.Exit(1)
	}
}

func printModels() error {
	ref := func(name string) spec.Ref { return spec.MustCreateRef("#/definitions/" + name) }
	definitions := openapi.GetOpenAPIDefinitions(ref)
	schemas := make(map[string]spec.Schema, len(definitions))
	for name, definition := range definitions {
		// Definitions that carry an embedded v2 schema must be emitted as that one: the output is v2.
		if embedded, ok := definition.Schema.Extensions[common.ExtensionV2Schema]; ok {
			if v2, ok := embedded.(spec.Schema); ok {
				schemas[name] = v2
				continue
			}
		}
		schemas[name] = definition.Schema
	}
	data, err := json.Marshal(&spec.Swagger{SwaggerProps: spec.SwaggerProps{
		Swagger:     "2.0",
		Definitions: schemas,
		Info:        &spec.Info{InfoProps: spec.InfoProps{Title: "pvpool", Version: "unversioned"}},
	}})
	if err != nil {
		return fmt.Errorf("serializing definitions: %w", err)
	}
	_, err = os.Stdout.Write(data)
	return err
}
