// kstatus-check: what GitOps tools read from an object's status, computed by
// the libraries those tools embed, so tests check the real readers, not a copy.
//
//   - kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the library behind
//     Flux's health checks and Helm 4's --wait=watcher;
//   - an Argo CD health.lua, run in gopher-lua (the interpreter Argo CD
//     embeds), as Argo CD runs it: the object as the global `obj`, the
//     script's returned table read for `status` and `message`.
//
// Input on stdin: one object, or a List (kubectl get -o json). Output: one
// JSON line per object, {"kind", "name", "kstatus", "kstatusMessage",
// "argo", "argoMessage"}; "argo" is empty without -lua.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Kind           string `json:"kind"`
	Name           string `json:"name"`
	KStatus        string `json:"kstatus"`
	KStatusMessage string `json:"kstatusMessage"`
	Argo           string `json:"argo"`
	ArgoMessage    string `json:"argoMessage"`
}

func main() {
	luaDir := flag.String("lua", "", "directory of Argo CD health checks, one <kind in lower case>.lua per kind")
	flag.Parse()
	if err := run(os.Stdin, os.Stdout, *luaDir); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer, luaDir string) error {
	raw, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	objects, err := decode(raw)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	for _, obj := range objects {
		v, err := judge(obj, luaDir)
		if err != nil {
			return fmt.Errorf("%s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
		if err := enc.Encode(v); err != nil {
			return err
		}
	}
	return nil
}

// decode reads one object or the items of a List, with whole numbers as
// int64 (apimachinery's JSON decoding, as a client's unstructured objects have them).
func decode(raw []byte) ([]*unstructured.Unstructured, error) {
	var doc map[string]any
	if err := utiljson.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("stdin is not a JSON object: %w", err)
	}
	items, isList := doc["items"].([]any)
	if !isList {
		return []*unstructured.Unstructured{{Object: doc}}, nil
	}
	objects := make([]*unstructured.Unstructured, 0, len(items))
	for _, item := range items {
		m, ok := item.(map[string]any)
		if !ok {
			return nil, errors.New("a List item is not an object")
		}
		objects = append(objects, &unstructured.Unstructured{Object: m})
	}
	return objects, nil
}

func judge(obj *unstructured.Unstructured, luaDir string) (verdict, error) {
	res, err := status.Compute(obj)
	if err != nil {
		return verdict{}, fmt.Errorf("kstatus: %w", err)
	}
	v := verdict{Kind: obj.GetKind(), Name: obj.GetName(), KStatus: res.Status.String(), KStatusMessage: res.Message}
	if luaDir == "" {
		return v, nil
	}
	script, err := os.ReadFile(filepath.Join(luaDir, strings.ToLower(obj.GetKind())+".lua"))
	if err != nil {
		return verdict{}, err
	}
	v.Argo, v.ArgoMessage, err = argoHealth(string(script), obj.Object)
	return v, err
}

// argoHealth runs a health.lua as Argo CD's lua VM does (its base, table,
// string, math and coroutine libraries; the object as the global obj).
func argoHealth(script string, obj map[string]any) (string, string, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
		{lua.CoroutineLibName, lua.OpenCoroutine},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return "", "", err
		}
	}
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return "", "", fmt.Errorf("health.lua: %w", err)
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", errors.New("health.lua returned no table")
	}
	return lua.LVAsString(table.RawGetString("status")), lua.LVAsString(table.RawGetString("message")), nil
}

// toLua converts decoded JSON as Argo CD does: objects to tables, arrays to
// 1-based tables, numbers, strings and booleans to their Lua values.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case map[string]any:
		t := l.NewTable()
		for k, item := range v {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	case []any:
		t := l.NewTable()
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case nil:
		return lua.LNil
	default:
		return lua.LString(fmt.Sprint(v))
	}
}
