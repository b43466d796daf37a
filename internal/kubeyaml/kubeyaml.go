// Package kubeyaml decodes Kubernetes manifests, multi-document YAML
// streams such as deploy/kubernetes/workerstats.yaml or what helm template
// prints, into their Go types, strictly. The tests that check the chart
// (test/deploy) and those that hand its objects to a real API server
// (test/harness) share it.
package kubeyaml

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Decode decodes every object of stream into its Go type in s: an
// unknown kind, an unknown or duplicate field, or a value of the wrong
// type is an error naming the document. Documents of comments alone are
// skipped.
func Decode(stream []byte, s *runtime.Scheme) ([]runtime.Object, error) {
	strict := json.NewSerializerWithOptions(json.DefaultMetaFactory, s, s, json.SerializerOptions{Yaml: true, Strict: true})
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	var objs []runtime.Object
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if isEmpty(doc) {
			continue
		}
		obj, gvk, err := strict.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i, gvk, err)
		}
		objs = append(objs, obj)
	}
}

// isEmpty says whether a YAML document holds only comments and blanks.
func isEmpty(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' && !bytes.Equal(line, []byte("---")) {
			return false
		}
	}
	return true
}
