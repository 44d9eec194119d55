//! `docs/api/openapi.yaml` must document exactly the routes `api::router` registers (every
//! path with every method, and nothing more), and every error code of `MonError::code`.
//!
//! The routes are read from the source text of `src/api/mod.rs` (the `.route("PATH",
//! get(..).post(..))` calls in `fn router`), the codes from `src/error.rs`, and the paths of
//! the document by a scan of its indentation, so no YAML parser is needed.

use std::collections::{BTreeMap, BTreeSet};

use tessera_mon::api::OPENAPI_YAML;

const API_SRC: &str = include_str!("../src/api/mod.rs");
const ERROR_SRC: &str = include_str!("../src/error.rs");

/// The method routers axum offers per HTTP method (`axum::routing::{get, post, ...}`).
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

type Routes = BTreeMap<String, BTreeSet<String>>;

/// The text of the item that starts at `start` in `src`, up to the `}` closing it at
/// `indent` (rustfmt puts it alone on its line).
fn item_body<'a>(src: &'a str, start: &str, indent: usize) -> &'a str {
    let from = src.find(start).unwrap_or_else(|| panic!("{start:?} not found"));
    let close = format!("\n{}}}\n", " ".repeat(indent));
    let len = src[from..].find(&close).unwrap_or_else(|| panic!("end of {start:?} not found"));
    &src[from..from + len]
}

/// `src` without `//` comments (line comments only; good enough for routes and codes).
fn strip_comments(src: &str) -> String {
    src.lines().map(|l| l.find("//").map_or(l, |i| &l[..i])).collect::<Vec<_>>().join("\n")
}

/// The methods of a method-router expression such as `get(a).post(b)` (whitespace
/// removed), ending at the `)` that closes the `.route(` call. Returns them and the rest.
fn scan_methods(expr: &str) -> (BTreeSet<String>, &str) {
    let mut methods = BTreeSet::new();
    let mut depth = 0usize;
    let mut ident = String::new();
    for (i, c) in expr.char_indices() {
        match c {
            '(' => {
                if depth == 0 {
                    assert!(
                        METHODS.contains(&ident.as_str()),
                        "unsupported method router {ident:?} in a .route() call of api/mod.rs; teach tests/openapi.rs about it"
                    );
                    methods.insert(ident.clone());
                }
                depth += 1;
                ident.clear();
            }
            ')' if depth == 0 => return (methods, &expr[i + 1..]),
            ')' => depth -= 1,
            c if depth == 0 && (c.is_ascii_alphanumeric() || c == '_') => ident.push(c),
            _ if depth == 0 => ident.clear(),
            _ => {}
        }
    }
    panic!("unterminated .route() call in api/mod.rs");
}

/// Every route of `api::router`: path -> methods (lowercase).
fn router_routes() -> Routes {
    let body: String = strip_comments(item_body(API_SRC, "pub fn router(", 0)).chars().filter(|c| !c.is_whitespace()).collect();
    for other in [".nest(", ".merge(", ".route_service(", ".nest_service("] {
        assert!(!body.contains(other), "router uses {other}..); teach tests/openapi.rs to read those routes");
    }
    let mut routes = Routes::new();
    let mut rest = body.as_str();
    while let Some(i) = rest.find(".route(") {
        let call = &rest[i + ".route(".len()..];
        let lit = call.strip_prefix('"').unwrap_or_else(|| panic!("a .route() path is not a string literal: {call:.60}"));
        let end = lit.find('"').expect("unterminated route path literal");
        let path = &lit[..end];
        let expr = lit[end + 1..].strip_prefix(',').unwrap_or_else(|| panic!("expected ',' after route {path:?}"));
        let (methods, after) = scan_methods(expr);
        assert!(!methods.is_empty(), "route {path:?} has no methods");
        let known = routes.entry(path.to_string()).or_default();
        for m in methods {
            assert!(known.insert(m.clone()), "route {path:?} registers {m} twice");
        }
        rest = after;
    }
    routes
}

/// Indentation of a line (spaces).
fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The key of a `key:` / `key: value` line (trimmed), without quotes; `None` for other lines.
fn yaml_key(line: &str) -> Option<String> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') || t.starts_with('-') {
        return None;
    }
    for q in ['"', '\''] {
        if let Some(quoted) = t.strip_prefix(q) {
            let end = quoted.find(q)?;
            return quoted[end + 1..].starts_with(':').then(|| quoted[..end].to_string());
        }
    }
    let colon = t.find(':')?;
    let after = &t[colon + 1..];
    (after.is_empty() || after.starts_with(' ')).then(|| t[..colon].to_string())
}

/// Every path of the document's top-level `paths:` map with its operations (lowercase).
fn documented_routes(yaml: &str) -> Routes {
    let section: Vec<&str> = yaml
        .lines()
        .skip_while(|l| l.trim_end() != "paths:")
        .skip(1)
        .take_while(|l| l.trim().is_empty() || l.starts_with(' ') || l.starts_with('#'))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    let path_indent = section.first().map(|l| indent(l)).expect("no `paths:` section, or it is empty");
    let op_indent = section.iter().map(|l| indent(l)).find(|&i| i > path_indent).expect("paths without operations");
    let mut routes = Routes::new();
    let mut current: Option<String> = None;
    for line in section {
        let ind = indent(line);
        assert!(ind >= path_indent, "bad indentation under `paths:`: {line:?}");
        if ind == path_indent {
            let key = yaml_key(line).unwrap_or_else(|| panic!("expected a path key: {line:?}"));
            assert!(key.starts_with('/'), "unexpected key {key:?} under `paths:`");
            assert!(!routes.contains_key(&key), "path {key:?} is documented twice");
            routes.insert(key.clone(), BTreeSet::new());
            current = Some(key);
        } else if ind == op_indent {
            let key = yaml_key(line).unwrap_or_else(|| panic!("expected a key: {line:?}"));
            if METHODS.contains(&key.as_str()) {
                let path = current.as_ref().expect("operation before any path");
                assert!(routes.get_mut(path).unwrap().insert(key.clone()), "{key} {path} is documented twice");
            }
        }
    }
    routes
}

/// Every `MonError::code` string.
fn error_codes() -> BTreeSet<String> {
    let body = strip_comments(item_body(ERROR_SRC, "pub fn code(", 4));
    let codes: BTreeSet<String> = body
        .split("=>")
        .skip(1)
        .map(|arm| {
            let lit = arm.trim_start().strip_prefix('"').unwrap_or_else(|| panic!("a code() arm is not a string literal: {arm:.60}"));
            lit[..lit.find('"').expect("unterminated code literal")].to_string()
        })
        .collect();
    assert!(codes.len() >= 10 && codes.contains("not_leader"), "code() scan looks wrong: {codes:?}");
    codes
}

fn pretty(routes: &[(String, String)]) -> String {
    routes.iter().map(|(p, m)| format!("\n  {} {p}", m.to_uppercase())).collect()
}

fn pairs(routes: &Routes) -> BTreeSet<(String, String)> {
    routes.iter().flat_map(|(p, ms)| ms.iter().map(move |m| (p.clone(), m.clone()))).collect()
}

#[test]
fn scanners_see_the_known_routes() {
    assert!(OPENAPI_YAML.starts_with("openapi: 3.0.3\n"), "the document must be OpenAPI 3.0.3");
    let code = router_routes();
    assert!(code.len() >= 10, "router scan found too few routes: {code:?}");
    assert!(code["/api/v1/osds"].contains("get") && code["/api/v1/osds"].contains("post"), "{code:?}");
    assert!(code["/api/v1/volumes/{name}"].contains("delete"), "{code:?}");
    let docs = documented_routes(OPENAPI_YAML);
    assert!(docs.contains_key("/healthz") && docs["/healthz"].contains("get"), "{docs:?}");
}

#[test]
fn every_route_is_documented() {
    let docs = pairs(&documented_routes(OPENAPI_YAML));
    let missing: Vec<_> = pairs(&router_routes()).into_iter().filter(|r| !docs.contains(r)).collect();
    assert!(missing.is_empty(), "routes of api::router missing from docs/api/openapi.yaml:{}", pretty(&missing));
}

#[test]
fn every_documented_route_exists() {
    let code = pairs(&router_routes());
    let extra: Vec<_> = pairs(&documented_routes(OPENAPI_YAML)).into_iter().filter(|r| !code.contains(r)).collect();
    assert!(extra.is_empty(), "docs/api/openapi.yaml documents routes api::router does not have:{}", pretty(&extra));
}

#[test]
fn every_error_code_is_documented() {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let documented = |code: &str| {
        OPENAPI_YAML
            .match_indices(code)
            .any(|(i, _)| !OPENAPI_YAML[..i].ends_with(word) && !OPENAPI_YAML[i + code.len()..].starts_with(word))
    };
    let missing: Vec<_> = error_codes().into_iter().filter(|c| !documented(c)).collect();
    assert!(missing.is_empty(), "error codes of MonError::code missing from docs/api/openapi.yaml: {missing:?}");
}
