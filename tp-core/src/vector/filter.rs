//! Metadata filters: a small JSON language, evaluated in Rust (embedded
//! backend) or compiled to jsonb SQL (PostgreSQL) with the same semantics.
//!
//! ```json
//! {"category": "news", "year": {"$gte": 2020, "$lt": 2024},
//!  "$or": [{"lang": {"$in": ["en", "de"]}}, {"tags": {"$contains": "featured"}}]}
//! ```
//!
//! Keys are metadata fields (dots reach into nested objects); several keys
//! mean all must hold. Operators: `$eq`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte`
//! (numbers, or strings compared bytewise), `$in`, `$nin`, `$exists`,
//! `$contains` (an array field holds a scalar), and `$and`, `$or`, `$not`.
//! A missing field matches only `$ne`, `$nin`, `$exists: false` and `$not`.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

const MAX_DEPTH: usize = 16;
const MAX_CONDITIONS: usize = 256;
const MAX_IN_VALUES: usize = 1024;
const MAX_PATH_SEGMENTS: usize = 8;
/// Values a whole filter compares with: each is a bind parameter on
/// PostgreSQL, which takes at most 65,535 in one statement.
const MAX_VALUES: usize = 4096;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every sub-filter holds.
    And(Vec<Filter>),
    /// At least one sub-filter holds.
    Or(Vec<Filter>),
    /// The sub-filter does not hold.
    Not(Box<Filter>),
    /// A comparison on one field.
    Field {
        /// Path into the metadata object.
        path: Vec<String>,
        /// The test.
        test: Test,
    },
}

/// A test on one field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// Equal (numbers by value).
    Eq(Value),
    /// Not equal, or missing.
    Ne(Value),
    /// Ordered comparison with a number or a string.
    Cmp(CmpOp, Value),
    /// Equal to one of the values.
    In(Vec<Value>),
    /// Equal to none of the values, or missing.
    Nin(Vec<Value>),
    /// Present (`true`) or absent (`false`).
    Exists(bool),
    /// An array containing this scalar.
    Contains(Value),
}

/// Ordered comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
}

impl CmpOp {
    fn sql(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Gte => ">=",
            CmpOp::Lt => "<",
            CmpOp::Lte => "<=",
        }
    }

    fn holds(self, ordering: Ordering) -> bool {
        match self {
            CmpOp::Gt => ordering == Ordering::Greater,
            CmpOp::Gte => ordering != Ordering::Less,
            CmpOp::Lt => ordering == Ordering::Less,
            CmpOp::Lte => ordering != Ordering::Greater,
        }
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::invalid("invalid_filter", message)
}

struct Parser {
    conditions: usize,
    values: usize,
}

impl Filter {
    /// Parses a filter from its JSON form.
    pub fn parse(value: &Value) -> Result<Filter> {
        Parser {
            conditions: 0,
            values: 0,
        }
        .object(value, 0)
    }

    /// Whether `metadata` satisfies the filter.
    pub fn matches(&self, metadata: &Value) -> bool {
        match self {
            Filter::And(all) => all.iter().all(|f| f.matches(metadata)),
            Filter::Or(any) => any.iter().any(|f| f.matches(metadata)),
            Filter::Not(inner) => !inner.matches(metadata),
            Filter::Field { path, test } => test.matches(lookup(metadata, path)),
        }
    }
}

impl Parser {
    fn object(&mut self, value: &Value, depth: usize) -> Result<Filter> {
        if depth > MAX_DEPTH {
            return Err(bad(format!("filter nests deeper than {MAX_DEPTH} levels")));
        }
        let Value::Object(map) = value else {
            return Err(bad("a filter must be a JSON object"));
        };
        if map.is_empty() {
            return Err(bad("a filter object must not be empty"));
        }
        let mut parts = Vec::with_capacity(map.len());
        for (key, value) in map {
            parts.push(match key.as_str() {
                "$and" | "$or" => {
                    let Value::Array(items) = value else {
                        return Err(bad(format!("{key} takes an array of filters")));
                    };
                    if items.is_empty() {
                        return Err(bad(format!("{key} must not be empty")));
                    }
                    let subs = items
                        .iter()
                        .map(|item| self.object(item, depth + 1))
                        .collect::<Result<Vec<_>>>()?;
                    if key == "$and" {
                        Filter::And(subs)
                    } else {
                        Filter::Or(subs)
                    }
                }
                "$not" => Filter::Not(Box::new(self.object(value, depth + 1)?)),
                op if op.starts_with('$') => {
                    return Err(bad(format!(
                        "unknown operator {op:?} at the top of a filter"
                    )));
                }
                field => self.field(field, value)?,
            });
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::And(parts)
        })
    }

    /// Counts the values a test compares with; refuses text PostgreSQL cannot hold.
    fn operand(&mut self, operand: &Value) -> Result<()> {
        self.values += match operand {
            Value::Array(values) => values.len().max(1),
            _ => 1,
        };
        if self.values > MAX_VALUES {
            return Err(bad(format!(
                "a filter may compare with at most {MAX_VALUES} values in all"
            )));
        }
        if has_nul(operand) {
            return Err(bad("filter values must not contain NUL characters"));
        }
        Ok(())
    }

    fn field(&mut self, key: &str, value: &Value) -> Result<Filter> {
        if key.contains('\0') {
            return Err(bad("field names must not contain NUL characters"));
        }
        let path = parse_path(key)?;
        let operators = match value {
            Value::Object(map) if !map.is_empty() && map.keys().all(|k| k.starts_with('$')) => map,
            _ => {
                self.count()?;
                self.operand(value)?;
                return Ok(Filter::Field {
                    path,
                    test: Test::Eq(value.clone()),
                });
            }
        };
        let mut tests = Vec::with_capacity(operators.len());
        for (op, operand) in operators {
            self.count()?;
            self.operand(operand)?;
            tests.push(Filter::Field {
                path: path.clone(),
                test: test(op, operand)?,
            });
        }
        Ok(if tests.len() == 1 {
            tests.remove(0)
        } else {
            Filter::And(tests)
        })
    }

    fn count(&mut self) -> Result<()> {
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(bad(format!(
                "a filter may hold at most {MAX_CONDITIONS} conditions"
            )));
        }
        Ok(())
    }
}

fn test(op: &str, operand: &Value) -> Result<Test> {
    let list = |operand: &Value| -> Result<Vec<Value>> {
        match operand {
            Value::Array(values) if values.len() <= MAX_IN_VALUES => Ok(values.clone()),
            Value::Array(_) => Err(bad(format!("{op} takes at most {MAX_IN_VALUES} values"))),
            _ => Err(bad(format!("{op} takes an array"))),
        }
    };
    Ok(match op {
        "$eq" => Test::Eq(operand.clone()),
        "$ne" => Test::Ne(operand.clone()),
        "$gt" | "$gte" | "$lt" | "$lte" => {
            if !(operand.is_number() || operand.is_string()) {
                return Err(bad(format!("{op} compares with a number or a string")));
            }
            let cmp = match op {
                "$gt" => CmpOp::Gt,
                "$gte" => CmpOp::Gte,
                "$lt" => CmpOp::Lt,
                _ => CmpOp::Lte,
            };
            Test::Cmp(cmp, operand.clone())
        }
        "$in" => Test::In(list(operand)?),
        "$nin" => Test::Nin(list(operand)?),
        "$exists" => match operand {
            Value::Bool(b) => Test::Exists(*b),
            _ => return Err(bad("$exists takes true or false")),
        },
        "$contains" => {
            if operand.is_array() || operand.is_object() {
                return Err(bad("$contains takes a single scalar value"));
            }
            Test::Contains(operand.clone())
        }
        other => return Err(bad(format!("unknown operator {other:?}"))),
    })
}

/// Whether any string in `value` (keys included) holds a NUL character,
/// which PostgreSQL's `text` and `jsonb` refuse.
pub(crate) fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn parse_path(key: &str) -> Result<Vec<String>> {
    let path: Vec<String> = key.split('.').map(str::to_owned).collect();
    if key.is_empty()
        || path.len() > MAX_PATH_SEGMENTS
        || path.iter().any(|s| s.is_empty() || s.len() > 128)
    {
        return Err(bad(format!(
            "field {key:?} must be up to {MAX_PATH_SEGMENTS} non-empty names joined by '.'"
        )));
    }
    Ok(path)
}

fn lookup<'a>(metadata: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(metadata, |value, key| value.as_object()?.get(key))
}

impl Test {
    fn matches(&self, value: Option<&Value>) -> bool {
        match self {
            Test::Eq(expected) => value.is_some_and(|v| json_eq(v, expected)),
            Test::Ne(expected) => !value.is_some_and(|v| json_eq(v, expected)),
            Test::Cmp(op, bound) => value
                .and_then(|v| compare(v, bound))
                .is_some_and(|ordering| op.holds(ordering)),
            Test::In(values) => value.is_some_and(|v| values.iter().any(|e| json_eq(v, e))),
            Test::Nin(values) => !value.is_some_and(|v| values.iter().any(|e| json_eq(v, e))),
            Test::Exists(wanted) => value.is_some() == *wanted,
            Test::Contains(item) => {
                matches!(value, Some(Value::Array(items)) if items.iter().any(|i| json_eq(i, item)))
            }
        }
    }
}

/// JSON equality with numbers compared by value, as jsonb does.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => objects_eq(x, y),
        _ => a == b,
    }
}

fn objects_eq(x: &Map<String, Value>, y: &Map<String, Value>) -> bool {
    x.len() == y.len()
        && x.iter()
            .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
}

fn compare(value: &Value, bound: &Value) -> Option<Ordering> {
    match (value, bound) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => None,
    }
}

/// A value bound into the generated SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlBind {
    /// A `text[]` path for `#>`.
    Path(Vec<String>),
    /// A `jsonb` value.
    Json(Value),
    /// A `float8`.
    Float(f64),
    /// A `text`.
    Text(String),
}

impl Filter {
    /// Compiles to a boolean SQL expression over `metadata` (jsonb) that is
    /// never NULL. Placeholders start at `$first`; binds are appended in order.
    pub fn to_sql(&self, first: usize, binds: &mut Vec<SqlBind>) -> String {
        let mut next = first + binds.len();
        let mut sql = String::new();
        self.write_sql(&mut sql, binds, &mut next);
        sql
    }

    fn write_sql(&self, sql: &mut String, binds: &mut Vec<SqlBind>, next: &mut usize) {
        match self {
            Filter::And(parts) | Filter::Or(parts) => {
                let joiner = if matches!(self, Filter::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                sql.push('(');
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        sql.push_str(joiner);
                    }
                    part.write_sql(sql, binds, next);
                }
                sql.push(')');
            }
            Filter::Not(inner) => {
                sql.push_str("(NOT ");
                inner.write_sql(sql, binds, next);
                sql.push(')');
            }
            Filter::Field { path, test } => {
                let mut bind = |value: SqlBind| {
                    binds.push(value);
                    *next += 1;
                    format!("${}", *next - 1)
                };
                let field = format!(
                    "(metadata #> {}::text[])",
                    bind(SqlBind::Path(path.clone()))
                );
                let any_eq = |values: &[Value], bind: &mut dyn FnMut(SqlBind) -> String| {
                    if values.is_empty() {
                        return "false".to_owned();
                    }
                    let terms: Vec<String> = values
                        .iter()
                        .map(|v| format!("{field} = {}::jsonb", bind(SqlBind::Json(v.clone()))))
                        .collect();
                    format!("({})", terms.join(" OR "))
                };
                let leaf = match test {
                    Test::Eq(v) => format!("{field} = {}::jsonb", bind(SqlBind::Json(v.clone()))),
                    Test::Ne(v) => format!(
                        "NOT COALESCE({field} = {}::jsonb, false)",
                        bind(SqlBind::Json(v.clone()))
                    ),
                    Test::Cmp(op, Value::Number(n)) => format!(
                        "CASE WHEN jsonb_typeof({field}) = 'number' THEN {field}::float8 {} {}::float8 ELSE false END",
                        op.sql(),
                        bind(SqlBind::Float(n.as_f64().unwrap_or(f64::NAN)))
                    ),
                    Test::Cmp(op, v) => format!(
                        "CASE WHEN jsonb_typeof({field}) = 'string' THEN ({field} #>> '{{}}') COLLATE \"C\" {} {}::text ELSE false END",
                        op.sql(),
                        bind(SqlBind::Text(v.as_str().unwrap_or_default().to_owned()))
                    ),
                    Test::In(values) => any_eq(values, &mut bind),
                    Test::Nin(values) => {
                        format!("NOT COALESCE({}, false)", any_eq(values, &mut bind))
                    }
                    Test::Exists(true) => format!("{field} IS NOT NULL"),
                    Test::Exists(false) => format!("{field} IS NULL"),
                    Test::Contains(v) => format!(
                        "(jsonb_typeof({field}) = 'array' AND {field} @> {}::jsonb)",
                        bind(SqlBind::Json(Value::Array(vec![v.clone()])))
                    ),
                };
                sql.push_str("COALESCE(");
                sql.push_str(&leaf);
                sql.push_str(", false)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Filter {
        Filter::parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    #[test]
    fn semantics_table() {
        let doc = json!({"cat": "news", "year": 2021, "score": 4.5, "tags": ["a", "b"],
                         "nested": {"lang": "en"}, "nothing": null});
        let cases = [
            (json!({"cat": "news"}), true),
            (json!({"cat": "blog"}), false),
            (json!({"year": 2021.0}), true),
            (json!({"year": {"$gte": 2020, "$lt": 2022}}), true),
            (json!({"year": {"$gt": 2021}}), false),
            (json!({"score": {"$lte": 4.5}}), true),
            (json!({"cat": {"$gt": "blog"}}), true),
            (json!({"cat": {"$gt": 5}}), false),
            (json!({"cat": {"$in": ["blog", "news"]}}), true),
            (json!({"cat": {"$nin": ["blog", "news"]}}), false),
            (json!({"missing": {"$nin": ["x"]}}), true),
            (json!({"missing": {"$ne": "x"}}), true),
            (json!({"missing": "x"}), false),
            (json!({"$not": {"missing": "x"}}), true),
            (json!({"missing": {"$exists": false}}), true),
            (json!({"nothing": {"$exists": true}}), true),
            (json!({"nothing": null}), true),
            (json!({"tags": {"$contains": "a"}}), true),
            (json!({"tags": {"$contains": "z"}}), false),
            (json!({"cat": {"$contains": "news"}}), false),
            (json!({"tags": ["a", "b"]}), true),
            (json!({"nested.lang": "en"}), true),
            (json!({"nested": {"lang": "en"}}), true),
            (json!({"$or": [{"cat": "blog"}, {"year": 2021}]}), true),
            (json!({"$and": [{"cat": "news"}, {"year": 1999}]}), false),
            (json!({"cat": "news", "year": 1999}), false),
        ];
        for (filter, expected) in cases {
            assert_eq!(parse(filter.clone()).matches(&doc), expected, "{filter}");
        }
    }

    #[test]
    fn malformed_filters_are_rejected_with_a_reason() {
        let cases = [
            json!([]),
            json!({}),
            json!({"$and": {}}),
            json!({"$or": []}),
            json!({"$nope": 1}),
            json!({"a": {"$gt": true}}),
            json!({"a": {"$in": 3}}),
            json!({"a": {"$exists": 1}}),
            json!({"a": {"$contains": [1]}}),
            json!({"a": {"$regex": "x"}}),
            json!({"": 1}),
            json!({"a..b": 1}),
        ];
        for case in cases {
            let err = Filter::parse(&case).expect_err(&case.to_string());
            assert_eq!(err.code(), "invalid_filter", "{case}");
        }
        let mut deep = json!({"a": 1});
        for _ in 0..20 {
            deep = json!({ "$not": deep });
        }
        assert!(Filter::parse(&deep).is_err());
        let many: Map<String, Value> = (0..300).map(|i| (format!("f{i}"), json!(i))).collect();
        assert!(Filter::parse(&Value::Object(many)).is_err());
    }

    #[test]
    fn sql_binds_every_value_and_numbers_placeholders() {
        let filter = parse(json!({"cat": "news", "year": {"$gte": 2020}, "tags": {"$in": []}}));
        let mut binds = vec![];
        let sql = filter.to_sql(2, &mut binds);
        assert!(
            sql.contains("$2::text[]") && sql.contains("$3::jsonb"),
            "{sql}"
        );
        assert!(sql.contains("$5::float8") && sql.contains("false"), "{sql}");
        assert_eq!(binds.len(), 5);
        assert!(
            !sql.contains("news"),
            "values must be bound, not inlined: {sql}"
        );
    }
}
