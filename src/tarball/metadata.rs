//! Typed fields of `metadata.config`, extracted from parsed terms.

use thiserror::Error;

use super::terms::Term;

/// The fields of `metadata.config` the mirror uses, plus every top-level pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// The package name.
    pub name: String,
    /// The release version.
    pub version: String,
    /// The OTP application name, when given.
    pub app: Option<String>,
    /// Build tools such as `mix` or `rebar3`; empty when absent.
    pub build_tools: Vec<String>,
    /// Dependencies, sorted by name.
    pub requirements: Vec<Requirement>,
    /// Every top-level `{Key, Value}` pair, in file order.
    pub terms: Vec<(String, Term)>,
}

/// One dependency of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The package depended on.
    pub name: String,
    /// The version requirement, e.g. `~> 1.0`.
    pub requirement: String,
    /// Whether the dependency is optional.
    pub optional: bool,
    /// The OTP application name, when given.
    pub app: Option<String>,
    /// The repository of the dependency, when given.
    pub repository: Option<String>,
}

/// Why well-formed terms are not valid package metadata.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetadataError {
    /// A top-level term is not a `{Key, Value}` tuple.
    #[error("term {index} is {kind}, not a {{Key, Value}} pair")]
    NotAPair { index: usize, kind: &'static str },
    /// A top-level key is not a UTF-8 binary or string.
    #[error("the key of term {index} is {kind}, not a UTF-8 binary")]
    KeyNotText { index: usize, kind: &'static str },
    /// The same key appears twice, so readers could disagree on its value.
    #[error("key `{key}` appears more than once")]
    DuplicateKey { key: String },
    /// A required key is absent.
    #[error("required key `{key}` is missing")]
    Missing { key: &'static str },
    /// A value has the wrong type.
    #[error("`{key}` is {kind}, expected {expected}")]
    WrongType {
        key: String,
        kind: &'static str,
        expected: &'static str,
    },
    /// A requirement is malformed.
    #[error("requirement {which}: {problem}")]
    Requirement { which: String, problem: String },
}

/// Extracts [`Metadata`] from the top-level terms of `metadata.config`.
pub fn extract(terms: Vec<Term>) -> Result<Metadata, MetadataError> {
    let mut pairs: Vec<(String, Term)> = Vec::with_capacity(terms.len());
    for (index, term) in terms.into_iter().enumerate() {
        let kind = term.kind();
        let Term::Tuple(items) = term else {
            return Err(MetadataError::NotAPair { index, kind });
        };
        let Ok([key, value]) = <[Term; 2]>::try_from(items) else {
            return Err(MetadataError::NotAPair { index, kind });
        };
        let key = key
            .as_str()
            .ok_or(MetadataError::KeyNotText {
                index,
                kind: key.kind(),
            })?
            .to_owned();
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(MetadataError::DuplicateKey { key });
        }
        pairs.push((key, value));
    }
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v);

    let text = |key: &'static str| -> Result<Option<String>, MetadataError> {
        get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or(MetadataError::WrongType {
                        key: key.into(),
                        kind: v.kind(),
                        expected: "a UTF-8 binary",
                    })
            })
            .transpose()
    };
    let name = text("name")?.ok_or(MetadataError::Missing { key: "name" })?;
    let version = text("version")?.ok_or(MetadataError::Missing { key: "version" })?;
    let app = text("app")?;
    let build_tools = match get("build_tools") {
        None => Vec::new(),
        Some(v) => v
            .as_list()
            .and_then(|items| {
                items
                    .iter()
                    .map(|t| t.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or(MetadataError::WrongType {
                key: "build_tools".into(),
                kind: v.kind(),
                expected: "a list of UTF-8 binaries",
            })?,
    };
    let mut requirements = match get("requirements") {
        None => Vec::new(),
        Some(v) => requirements(v)?,
    };
    // Stable, so duplicate names (which hex_core does not reject) keep file order.
    requirements.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Metadata {
        name,
        version,
        app,
        build_tools,
        requirements,
        terms: pairs,
    })
}

fn requirements(value: &Term) -> Result<Vec<Requirement>, MetadataError> {
    let wrong = || MetadataError::WrongType {
        key: "requirements".into(),
        kind: value.kind(),
        expected: "a list or map of requirements",
    };
    match value {
        // Map form written as an Erlang map: `#{<<"dep">> => Fields}`.
        Term::Map(pairs) => pairs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| keyed_requirement(i, k, v))
            .collect(),
        Term::List(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                // Map form written as a kvlist: `[{<<"dep">>, Fields}]`.
                Term::Tuple(kv) => match kv.as_slice() {
                    [k, v] => keyed_requirement(i, k, v),
                    _ => Err(requirement_error(i.to_string(), "is a tuple, not a pair")),
                },
                // Legacy form (Mix): a list of field lists that carry `name`.
                Term::List(_) | Term::Map(_) => {
                    let fields = fields(i.to_string(), item)?;
                    let name = field_text(&i.to_string(), &fields, "name")?
                        .ok_or_else(|| requirement_error(i.to_string(), "has no `name`"))?;
                    requirement(name, &fields)
                }
                other => Err(requirement_error(
                    i.to_string(),
                    &format!("is {}, not a pair or a field list", other.kind()),
                )),
            })
            .collect(),
        _ => Err(wrong()),
    }
}

fn requirement_error(which: String, problem: &str) -> MetadataError {
    MetadataError::Requirement {
        which,
        problem: problem.to_owned(),
    }
}

fn keyed_requirement(index: usize, key: &Term, value: &Term) -> Result<Requirement, MetadataError> {
    let name = key.as_str().ok_or_else(|| {
        requirement_error(
            index.to_string(),
            &format!("name is {}, not a UTF-8 binary", key.kind()),
        )
    })?;
    let fields = fields(format!("`{name}`"), value)?;
    requirement(name.to_owned(), &fields)
}

/// A requirement's fields, from a kvlist or a map with text keys.
fn fields(which: String, term: &Term) -> Result<Vec<(&str, &Term)>, MetadataError> {
    let pairs: Vec<(&Term, &Term)> = match term {
        Term::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Term::List(items) => items
            .iter()
            .map(|item| match item.as_tuple() {
                Some([k, v]) => Ok((k, v)),
                _ => Err(requirement_error(
                    which.clone(),
                    &format!("field is {}, not a pair", item.kind()),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(requirement_error(
                which,
                &format!("fields are {}, not a list or map", other.kind()),
            ));
        }
    };
    let mut out: Vec<(&str, &Term)> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let key = k.as_str().ok_or_else(|| {
            requirement_error(
                which.clone(),
                &format!("field key is {}, not a UTF-8 binary", k.kind()),
            )
        })?;
        if out.iter().any(|(seen, _)| *seen == key) {
            return Err(requirement_error(
                which,
                &format!("field `{key}` appears more than once"),
            ));
        }
        out.push((key, v));
    }
    Ok(out)
}

fn field<'t>(fields: &[(&str, &'t Term)], key: &str) -> Option<&'t Term> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// A text field; the atoms `nil` (Elixir) and `undefined` (Erlang) mean absent.
fn field_text(
    which: &str,
    fields: &[(&str, &Term)],
    key: &str,
) -> Result<Option<String>, MetadataError> {
    match field(fields, key) {
        None => Ok(None),
        Some(Term::Atom(a)) if a == "nil" || a == "undefined" => Ok(None),
        Some(v) => v.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| {
            requirement_error(
                which.to_owned(),
                &format!("`{key}` is {}, not a UTF-8 binary", v.kind()),
            )
        }),
    }
}

fn requirement(name: String, fields: &[(&str, &Term)]) -> Result<Requirement, MetadataError> {
    let which = format!("`{name}`");
    // hex.pm's registry builder serves a missing requirement as `>= 0.0.0`; old
    // Mix releases wrote `nil` for deps declared without one.
    let requirement = match field(fields, "requirement") {
        None => return Err(requirement_error(which, "has no `requirement`")),
        Some(_) => field_text(&which, fields, "requirement")?.unwrap_or_else(|| ">= 0.0.0".into()),
    };
    let optional = match field(fields, "optional") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| {
            requirement_error(
                which.clone(),
                &format!("`optional` is {}, not true or false", v.kind()),
            )
        })?,
    };
    Ok(Requirement {
        app: field_text(&which, fields, "app")?,
        repository: field_text(&which, fields, "repository")?,
        name,
        requirement,
        optional,
    })
}

impl Metadata {
    /// The release's `meta` as hex.pm's API shows it (JSON): app, build
    /// tools, Elixir requirement, description, licenses, links.
    pub fn api_meta(&self) -> serde_json::Value {
        use serde_json::Value;
        let term = |k: &str| self.terms.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let text = |k: &str| term(k).and_then(|v| v.as_str()).map(str::to_owned);
        let list = |k: &str| -> Vec<String> {
            term(k)
                .and_then(|v| v.as_list())
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let links: serde_json::Map<String, Value> = match term("links") {
            Some(Term::Map(pairs)) => pairs
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.as_str()?.to_owned(),
                        Value::String(v.as_str()?.to_owned()),
                    ))
                })
                .collect(),
            Some(Term::List(items)) => items
                .iter()
                .filter_map(|t| {
                    let [k, v] = t.as_tuple()? else { return None };
                    Some((
                        k.as_str()?.to_owned(),
                        Value::String(v.as_str()?.to_owned()),
                    ))
                })
                .collect(),
            _ => serde_json::Map::new(),
        };
        let mut meta = serde_json::json!({
            "app": self.app,
            "build_tools": self.build_tools,
            "elixir": text("elixir"),
            "description": text("description"),
            "licenses": list("licenses"),
            "links": links,
        });
        // What `extra:` searches for (hex.pm keeps the publisher's `extra`).
        if let (Some(extra), Some(object)) = (term("extra"), meta.as_object_mut()) {
            object.insert("extra".into(), extra.to_json());
        }
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::super::terms::parse_consult;
    use super::*;

    fn check(text: &str) -> Result<Metadata, MetadataError> {
        extract(parse_consult(text.as_bytes()).expect("test input parses"))
    }

    fn req(name: &str, requirement: &str, optional: bool, app: Option<&str>) -> Requirement {
        Requirement {
            name: name.into(),
            requirement: requirement.into(),
            optional,
            app: app.map(Into::into),
            repository: None,
        }
    }

    /// Printed by `io_lib_pretty:print(Pair, [{encoding, utf8}])`, one pair per
    /// form, as hex_core writes metadata.config (generated with OTP 25).
    const HEX_CORE_SAMPLE: &str = r#"{<<"app">>,<<"alpha">>}.
{<<"build_tools">>,[<<"rebar3">>]}.
{<<"description">>,<<"Test package alpha hé"/utf8>>}.
{<<"files">>,
 [<<"src">>,<<"src/alpha.app.src">>,<<"src/alpha.erl">>,<<"rebar.config">>,
  <<"README.md">>]}.
{<<"licenses">>,[<<"Apache-2.0">>]}.
{<<"links">>,[{<<"GitHub">>,<<"https://github.com/x/alpha">>}]}.
{<<"name">>,<<"alpha">>}.
{<<"requirements">>,
 [{<<"barbaz_long_name_here">>,
   [{<<"app">>,<<"barbaz">>},
    {<<"optional">>,true},
    {<<"requirement">>,<<"~> 0.1 or ~> 1.0">>}]},
  {<<"foo">>,
   [{<<"app">>,<<"foo">>},
    {<<"optional">>,false},
    {<<"requirement">>,<<"~> 0.1">>}]}]}.
{<<"version">>,<<"0.1.0">>}.
"#;

    #[test]
    fn hex_core_sample() {
        let meta = check(HEX_CORE_SAMPLE).unwrap();
        assert_eq!(meta.name, "alpha");
        assert_eq!(meta.version, "0.1.0");
        assert_eq!(meta.app.as_deref(), Some("alpha"));
        assert_eq!(meta.build_tools, vec!["rebar3".to_string()]);
        assert_eq!(
            meta.requirements,
            vec![
                req(
                    "barbaz_long_name_here",
                    "~> 0.1 or ~> 1.0",
                    true,
                    Some("barbaz")
                ),
                req("foo", "~> 0.1", false, Some("foo")),
            ]
        );
        assert_eq!(meta.terms.len(), 9);
        let description = meta.terms.iter().find(|(k, _)| k == "description");
        assert_eq!(
            description.and_then(|(_, v)| v.as_str()),
            Some("Test package alpha hé")
        );
    }

    #[test]
    fn legacy_list_requirements() {
        let meta = check(
            r#"{<<"name">>,<<"bar">>}.
{<<"version">>,<<"0.1.0">>}.
{<<"requirements">>,[[{<<"app">>,<<"zed">>},{<<"name">>,<<"zed">>},{<<"optional">>,false},{<<"repository">>,<<"mini_hex">>},{<<"requirement">>,<<"~> 0.1">>}],
 [{<<"name">>,<<"abc">>},{<<"app">>,nil},{<<"optional">>,true},{<<"requirement">>,nil}]]}.
"#,
        )
        .unwrap();
        let mut zed = req("zed", "~> 0.1", false, Some("zed"));
        zed.repository = Some("mini_hex".into());
        assert_eq!(
            meta.requirements,
            vec![req("abc", ">= 0.0.0", true, None), zed]
        );
    }

    #[test]
    fn erlang_map_requirements() {
        let meta = check(
            r#"{<<"name">>,<<"x">>}. {<<"version">>,<<"1.0.0">>}.
{<<"requirements">>, #{<<"b">> => #{<<"app">> => <<"b">>, <<"optional">> => false, <<"requirement">> => <<"~> 1.0">>},
                       <<"a">> => [{<<"requirement">>, <<">= 0.0.0">>}]}}."#,
        )
        .unwrap();
        assert_eq!(
            meta.requirements,
            vec![
                req("a", ">= 0.0.0", false, None),
                req("b", "~> 1.0", false, Some("b"))
            ]
        );
    }

    #[test]
    fn empty_or_absent_requirements() {
        let base = "{<<\"name\">>,<<\"x\">>}.\n{<<\"version\">>,<<\"1.0.0\">>}.\n";
        assert!(check(base).unwrap().requirements.is_empty());
        let empty = format!("{base}{{<<\"requirements\">>,[]}}.");
        assert!(check(&empty).unwrap().requirements.is_empty());
        let empty_map = format!("{base}{{<<\"requirements\">>,#{{}}}}.");
        assert!(check(&empty_map).unwrap().requirements.is_empty());
        // Strings (lists of characters) are accepted for keys and values too.
        let strings = "{\"name\",\"x\"}.\n{\"version\",\"1.0.0\"}.";
        assert_eq!(check(strings).unwrap().name, "x");
    }

    #[test]
    fn rejections() {
        let base = "{<<\"name\">>,<<\"x\">>}.\n{<<\"version\">>,<<\"1.0.0\">>}.\n";
        let with = |extra: &str| check(&format!("{base}{extra}")).unwrap_err();
        assert_eq!(
            check("{<<\"version\">>,<<\"1\">>}.").unwrap_err(),
            MetadataError::Missing { key: "name" }
        );
        assert_eq!(
            check("{<<\"name\">>,<<\"x\">>}.").unwrap_err(),
            MetadataError::Missing { key: "version" }
        );
        assert!(matches!(
            with("{a, b, c}."),
            MetadataError::NotAPair { index: 2, .. }
        ));
        assert!(matches!(with("[1]."), MetadataError::NotAPair { .. }));
        assert!(matches!(
            with("{name, 1}."),
            MetadataError::KeyNotText { .. }
        ));
        assert!(matches!(
            with("{<<255>>, 1}."),
            MetadataError::KeyNotText { .. }
        ));
        assert_eq!(
            with("{<<\"name\">>,<<\"y\">>}."),
            MetadataError::DuplicateKey { key: "name".into() }
        );
        assert!(matches!(
            check("{<<\"name\">>, name}. {<<\"version\">>,<<\"1\">>}.").unwrap_err(),
            MetadataError::WrongType { .. }
        ));
        assert!(matches!(
            with("{<<\"build_tools\">>, [mix]}."),
            MetadataError::WrongType { .. }
        ));
        assert!(matches!(
            with("{<<\"requirements\">>, foo}."),
            MetadataError::WrongType { .. }
        ));
        for bad in [
            "[[{<<\"requirement\">>,<<\"1\">>}]]",
            "[{<<\"a\">>, [{<<\"optional\">>, false}]}]",
            "[{<<\"a\">>, [{<<\"requirement\">>, <<\"1\">>}, {<<\"optional\">>, maybe}]}]",
            "[{<<\"a\">>, [{<<\"requirement\">>, <<\"1\">>}, {<<\"requirement\">>, <<\"2\">>}]}]",
            "[{<<\"a\">>, [{<<\"requirement\">>, 1}]}]",
            "[{a, [{<<\"requirement\">>, <<\"1\">>}]}]",
            "[{<<\"a\">>, b, c}]",
            "[42]",
        ] {
            assert!(
                matches!(
                    with(&format!("{{<<\"requirements\">>, {bad}}}.")),
                    MetadataError::Requirement { .. }
                ),
                "{bad}"
            );
        }
    }
}
