//! The targeting condition language (a MongoDB-like query language).
//!
//! Conditions are compiled once from JSON into a [`Condition`] tree; regular
//! expressions, version strings, `$in` sets and comparison operands are all
//! prepared at compile time. Evaluation walks the tree against the
//! attributes and does not allocate for scalar attributes.
//!
//! Malformed parts (unknown operators, invalid regular expressions, operands
//! of the wrong type, nesting beyond [`MAX_DEPTH`]) compile to a node that
//! evaluates to `false` and are reported as diagnostics.

use crate::attributes::{child, AttrKey, FastBuild, Root};
use crate::js::{self, Prim};
use regex::{Regex, RegexBuilder};
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::HashSet;

/// Maximum nesting depth of a condition document. Deeper parts evaluate to
/// `false` and are reported, which also bounds recursion during evaluation.
pub const MAX_DEPTH: usize = 64;

/// Maximum compiled size of one regular expression.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Lists longer than this are matched through hash sets.
const SET_THRESHOLD: usize = 12;

pub(crate) static NULL: Value = Value::Null;

/// A compiled targeting condition.
///
/// ```
/// use flywheel_flags::{Attributes, Condition};
/// let (cond, diagnostics) = Condition::compile(&serde_json::json!({"age": {"$gte": 18}}));
/// assert!(diagnostics.is_empty());
/// assert!(cond.eval(&Attributes::from_json(&serde_json::json!({"age": 21}))));
/// ```
#[derive(Debug)]
pub struct Condition {
    /// Attribute tests that must all pass, cheapest first: the flat
    /// conjunction most conditions are, evaluated inline.
    fields: Box<[FieldTest]>,
    /// The rest of the condition (`$or`, `$not`, ...), tested after
    /// `fields`; `None` when there is nothing else.
    rest: Option<Box<Node>>,
}

impl Condition {
    /// Compiles a condition document; the second value lists problems found
    /// (the affected parts evaluate to `false`).
    pub fn compile(doc: &Value) -> (Condition, Vec<String>) {
        let mut diags = Vec::new();
        let c = Condition::compile_with(doc, &mut diags, "condition");
        (c, diags)
    }

    pub(crate) fn compile_with(doc: &Value, diags: &mut Vec<String>, at: &str) -> Condition {
        let mut cx = Compiler {
            diags,
            path: at.to_string(),
        };
        Condition::from_node(cx.node(doc, 0))
    }

    /// Splits a compiled tree into its leading attribute tests and the
    /// rest, keeping the evaluation order.
    fn from_node(node: Node) -> Condition {
        let (fields, rest): (Vec<FieldTest>, Option<Node>) = match node {
            Node::Fields(list) => (list.into_vec(), None),
            Node::Field(f) => (vec![f], None),
            Node::All(parts) => {
                let mut fields = Vec::new();
                let mut parts = parts.into_iter().peekable();
                while let Some(Node::Field(_)) = parts.peek() {
                    if let Some(Node::Field(f)) = parts.next() {
                        fields.push(f);
                    }
                }
                let mut rest: Vec<Node> = parts.collect();
                let rest = match rest.len() {
                    0 => None,
                    1 => rest.pop(),
                    _ => Some(Node::All(rest)),
                };
                (fields, rest)
            }
            other => (Vec::new(), Some(other)),
        };
        Condition {
            fields: fields.into_boxed_slice(),
            rest: rest.map(Box::new),
        }
    }

    /// A condition that always passes (`{}`).
    pub fn always() -> Condition {
        Condition {
            fields: Box::new([]),
            rest: None,
        }
    }

    /// Evaluates against attributes, without saved groups.
    pub fn eval(&self, attrs: &crate::Attributes) -> bool {
        self.eval_root(attrs, SavedGroups::empty())
    }

    /// Evaluates against attributes with saved groups (`$inGroup`).
    pub fn eval_with_groups(&self, attrs: &crate::Attributes, groups: &SavedGroups) -> bool {
        self.eval_root(attrs, groups)
    }

    /// Evaluates against an arbitrary JSON value (object) as the root.
    pub fn eval_value(&self, value: &Value, groups: &SavedGroups) -> bool {
        self.eval_root(value, groups)
    }

    /// Flat conditions (the common case) are evaluated inline in the caller.
    #[inline(always)]
    pub(crate) fn eval_root<R: Root + ?Sized>(&self, root: &R, groups: &SavedGroups) -> bool {
        self.eval_in(root, &Scope::new(groups))
    }

    /// [`Condition::eval_root`] with a scope built once by the caller (one
    /// per feature rather than one per rule).
    #[inline(always)]
    pub(crate) fn eval_in<R: Root + ?Sized>(&self, root: &R, cx: &Scope<'_>) -> bool {
        for f in self.fields.iter() {
            if !f.eval(root, cx) {
                return false;
            }
        }
        match &self.rest {
            None => true,
            Some(node) => eval_node(node, root, cx),
        }
    }
}

#[derive(Debug)]
enum Node {
    /// All entries of a condition object must pass (implicit `$and`).
    All(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    Not(Box<Node>),
    /// One attribute (path) test.
    Field(FieldTest),
    /// Conjunction of attribute tests (the common shape of a condition).
    Fields(Box<[FieldTest]>),
    /// `{"$savedGroup": {"id": ..., "attributeKey"?: ...}}`
    SavedGroup(Box<str>, RefKey),
    /// Malformed: always false.
    False,
}

/// A compiled attribute path `first.rest[0].rest[1]...` (JavaScript
/// `getPath`: missing parts give `null`).
#[derive(Debug)]
struct Path {
    first: AttrKey,
    rest: Box<[AttrKey]>,
}

impl Path {
    fn new(path: &str) -> Path {
        let mut parts = path.split('.');
        Path {
            first: AttrKey::new(parts.next().unwrap_or("")),
            rest: parts.map(AttrKey::new).collect(),
        }
    }

    #[inline(always)]
    fn get<'v, R: Root + ?Sized>(&self, root: &'v R) -> &'v Value {
        let mut cur = root.lookup(&self.first).unwrap_or(&NULL);
        for key in self.rest.iter() {
            cur = child(cur, key).unwrap_or(&NULL);
        }
        cur
    }
}

/// `actual <rel> n` for an attribute that is not a number (JavaScript's
/// relational comparison with coercion).
#[inline(never)]
fn cmp_number_slow(actual: &Value, n: f64, rel: Rel) -> bool {
    js::to_number_cmp(actual, n).is_some_and(|o| rel.holds(o))
}

/// A test on the value at an attribute path.
#[derive(Debug)]
struct FieldTest {
    path: Path,
    check: Check,
}

/// A field test, with the common shapes specialised at compile time so that
/// evaluation dispatches once.
#[derive(Debug)]
enum Check {
    /// `"field": "s"`: `String(value) === s`.
    Str(Box<str>),
    /// `{"$eq": "s"}`: `value === s`.
    StrictStr(Box<str>),
    /// `{"$ne": "s"}`: `value !== s`.
    NotStrictStr(Box<str>),
    /// `{"$in": [...]}` (case-sensitive).
    In(Box<ValueSet>),
    /// `{"$lt": number}`
    Lt(f64),
    /// `{"$lte": number}`
    Lte(f64),
    /// `{"$gt": number}`
    Gt(f64),
    /// `{"$gte": number}`
    Gte(f64),
    /// `"field": true|false`.
    Bool(bool),
    /// Anything else.
    Other(Box<Test>),
}

impl FieldTest {
    fn new(path: &str, test: Test) -> FieldTest {
        let check = match test {
            Test::Str(s) => Check::Str(s),
            Test::Op(Op::Eq(Value::String(s))) => Check::StrictStr(s.into_boxed_str()),
            Test::Op(Op::Ne(Value::String(s))) => Check::NotStrictStr(s.into_boxed_str()),
            Test::Op(Op::In(set)) if !set.insensitive => Check::In(set),
            Test::Op(Op::Cmp(Rel::Lt, Prim::Num(n))) => Check::Lt(n),
            Test::Op(Op::Cmp(Rel::Lte, Prim::Num(n))) => Check::Lte(n),
            Test::Op(Op::Cmp(Rel::Gt, Prim::Num(n))) => Check::Gt(n),
            Test::Op(Op::Cmp(Rel::Gte, Prim::Num(n))) => Check::Gte(n),
            Test::Bool(b) => Check::Bool(b),
            other => Check::Other(Box::new(other)),
        };
        FieldTest {
            path: Path::new(path),
            check,
        }
    }

    #[inline(always)]
    fn eval<R: Root + ?Sized>(&self, root: &R, cx: &Scope<'_>) -> bool {
        let actual = self.path.get(root);
        match &self.check {
            Check::Str(s) => match actual {
                Value::String(a) => js::str_eq(a, s),
                _ => js::with_js_string(actual, |a| a == &**s),
            },
            Check::StrictStr(s) => matches!(actual, Value::String(a) if js::str_eq(a, s)),
            Check::NotStrictStr(s) => !matches!(actual, Value::String(a) if js::str_eq(a, s)),
            Check::In(set) => match actual {
                Value::String(a) => set.contains_str(a),
                _ => set.is_in(actual),
            },
            // NaN compares false either way, as `partial_cmp` would.
            Check::Lt(n) => match actual {
                Value::Number(a) => js::num(a) < *n,
                _ => cmp_number_slow(actual, *n, Rel::Lt),
            },
            Check::Lte(n) => match actual {
                Value::Number(a) => js::num(a) <= *n,
                _ => cmp_number_slow(actual, *n, Rel::Lte),
            },
            Check::Gt(n) => match actual {
                Value::Number(a) => js::num(a) > *n,
                _ => cmp_number_slow(actual, *n, Rel::Gt),
            },
            Check::Gte(n) => match actual {
                Value::Number(a) => js::num(a) >= *n,
                _ => cmp_number_slow(actual, *n, Rel::Gte),
            },
            Check::Bool(b) => match actual {
                Value::Bool(a) => a == b,
                Value::Null => false,
                _ => js::truthy(actual) == *b,
            },
            Check::Other(t) => eval_test(t, actual, cx),
        }
    }

    fn cost(&self) -> u32 {
        let test = match &self.check {
            Check::Str(_) | Check::StrictStr(_) | Check::NotStrictStr(_) | Check::Bool(_) => 1,
            Check::Lt(_) | Check::Lte(_) | Check::Gt(_) | Check::Gte(_) => 2,
            Check::In(_) => 3,
            Check::Other(t) => t.cost(),
        };
        1 + self.path.rest.len() as u32 + test
    }
}

impl Node {
    /// A conjunction of side-effect-free checks: cheap ones run first, and
    /// a conjunction of plain attribute tests becomes a flat list.
    fn conjunction(mut parts: Vec<Node>) -> Node {
        parts.sort_by_key(Node::cost);
        if parts.len() > 1 && parts.iter().all(|p| matches!(p, Node::Field(..))) {
            let fields = parts
                .into_iter()
                .filter_map(|p| match p {
                    Node::Field(f) => Some(f),
                    _ => None,
                })
                .collect();
            return Node::Fields(fields);
        }
        Node::All(parts)
    }

    /// Rough evaluation cost, used to order conjunctions.
    fn cost(&self) -> u32 {
        match self {
            Node::False => 0,
            Node::Field(f) => f.cost(),
            Node::Fields(v) => v.iter().map(FieldTest::cost).sum(),
            Node::Not(n) => n.cost(),
            Node::SavedGroup(..) => 12,
            Node::All(v) | Node::Or(v) | Node::Nor(v) => 4 + v.iter().map(Node::cost).sum::<u32>(),
        }
    }
}

impl Test {
    fn cost(&self) -> u32 {
        match self {
            Test::Null | Test::Bool(_) | Test::Num(_) | Test::Str(_) => 1,
            Test::StrI(_) => 2,
            Test::Json(_) => 6,
            Test::Op(op) => op.cost(),
            Test::Ops(ops) => ops.iter().map(Op::cost).sum(),
        }
    }
}

impl Op {
    fn cost(&self) -> u32 {
        match self {
            Op::Invalid | Op::Exists(_) | Op::Type(_) | Op::Eq(_) | Op::Ne(_) => 1,
            Op::Cmp(..) => 2,
            Op::In(_) | Op::Nin(_) => 3,
            Op::Literal(..) | Op::InGroup(_) | Op::NotInGroup(_) => 4,
            Op::Version(..) => 6,
            Op::Not(t) | Op::Size(t) => 1 + t.cost(),
            Op::Regex(_) => 12,
            Op::ElemTest(_) | Op::ElemCond(_) | Op::All(_) => 16,
        }
    }
}

#[derive(Debug)]
enum Test {
    /// `String(value) === s`
    Str(Box<str>),
    /// `String(value).toLowerCase() === s` (inside `$alli`)
    StrI(Box<str>),
    /// `value * 1 === n`
    Num(f64),
    /// `value !== null && !!value === b`
    Bool(bool),
    /// `value === null`
    Null,
    /// `JSON.stringify(value) === JSON.stringify(v)`
    Json(Value),
    /// Operator object with a single operator.
    Op(Op),
    /// Operator object: every operator must pass.
    Ops(Vec<Op>),
}

#[derive(Debug, Clone, Copy)]
enum Rel {
    Lt,
    Lte,
    Gt,
    Gte,
    Eq,
    Ne,
}

impl Rel {
    #[inline]
    fn holds(self, o: Ordering) -> bool {
        match self {
            Rel::Lt => o == Ordering::Less,
            Rel::Lte => o != Ordering::Greater,
            Rel::Gt => o == Ordering::Greater,
            Rel::Gte => o != Ordering::Less,
            Rel::Eq => o == Ordering::Equal,
            Rel::Ne => o != Ordering::Equal,
        }
    }
}

#[derive(Debug)]
enum Op {
    Eq(Value),
    Ne(Value),
    Cmp(Rel, Prim),
    Exists(bool),
    In(Box<ValueSet>),
    Nin(Box<ValueSet>),
    InGroup(Box<str>),
    NotInGroup(Box<str>),
    Not(Box<Test>),
    Size(Box<Test>),
    ElemTest(Box<Test>),
    ElemCond(Box<Node>),
    All(Vec<Test>),
    Regex(Box<Regex>),
    Literal(Box<(Literal, bool)>),
    Type(Box<str>),
    Version(Rel, Box<str>),
    Invalid,
}

/// A list of values for `$in`-style membership (JavaScript `includes`,
/// i.e. strict equality), optionally case-insensitive for strings.
#[derive(Debug, Default)]
pub(crate) struct ValueSet {
    items: Vec<Value>,
    /// The string items, for lists too short for `strs`.
    str_items: Box<[Box<str>]>,
    insensitive: bool,
    strs: Option<HashSet<Box<str>, FastBuild>>,
    nums: Option<HashSet<u64, FastBuild>>,
}

#[inline(never)]
fn set_contains_str(strs: &HashSet<Box<str>, FastBuild>, s: &str) -> bool {
    strs.contains(s)
}

fn num_bits(f: f64) -> u64 {
    if f == 0.0 {
        0
    } else {
        f.to_bits()
    }
}

impl ValueSet {
    fn new(items: &[Value], insensitive: bool) -> ValueSet {
        let items: Vec<Value> = items
            .iter()
            .map(|v| match v {
                Value::String(s) if insensitive => Value::String(s.to_lowercase()),
                other => other.clone(),
            })
            .collect();
        let str_items = if items.len() > SET_THRESHOLD {
            Box::default()
        } else {
            items
                .iter()
                .filter_map(|v| v.as_str().map(Box::from))
                .collect()
        };
        let mut set = ValueSet {
            items,
            str_items,
            insensitive,
            strs: None,
            nums: None,
        };
        if set.items.len() > SET_THRESHOLD {
            let mut strs = HashSet::with_hasher(FastBuild);
            let mut nums = HashSet::with_hasher(FastBuild);
            for v in &set.items {
                match v {
                    Value::String(s) => {
                        strs.insert(s.clone().into_boxed_str());
                    }
                    Value::Number(n) => {
                        nums.insert(num_bits(js::num(n)));
                    }
                    _ => {}
                }
            }
            set.strs = Some(strs);
            set.nums = Some(nums);
        }
        set
    }

    /// `expected.includes(actual)`.
    #[inline]
    fn contains(&self, actual: &Value) -> bool {
        match actual {
            Value::String(s) if self.insensitive => {
                if s.bytes().any(|b| b.is_ascii_uppercase()) || !s.is_ascii() {
                    let lower = s.to_lowercase();
                    self.contains_str(&lower)
                } else {
                    self.contains_str(s)
                }
            }
            Value::String(s) => self.contains_str(s),
            Value::Number(n) => match &self.nums {
                Some(nums) => nums.contains(&num_bits(js::num(n))),
                None => self.items.iter().any(|v| js::strict_eq(v, actual)),
            },
            Value::Array(_) | Value::Object(_) => false,
            _ => self.items.iter().any(|v| js::strict_eq(v, actual)),
        }
    }

    #[inline(always)]
    fn contains_str(&self, s: &str) -> bool {
        match &self.strs {
            None => {
                for x in self.str_items.iter() {
                    if js::str_eq(x, s) {
                        return true;
                    }
                }
                false
            }
            Some(strs) => set_contains_str(strs, s),
        }
    }

    /// `isIn`: intersection when `actual` is an array.
    #[inline]
    fn is_in(&self, actual: &Value) -> bool {
        match actual {
            Value::Array(a) => a.iter().any(|el| self.contains(el)),
            _ => self.contains(actual),
        }
    }
}

/// One saved group.
#[derive(Debug)]
enum GroupEntry {
    /// A bare array of values (v1 format).
    Bare(ValueSet),
    /// `{"type": "list", "attributeKey": ..., "values": [...]}`; `values` is
    /// `None` when malformed.
    List {
        key: Option<Path>,
        values: Option<ValueSet>,
    },
    /// `{"type": "condition", "condition": {...}}`; `None` when malformed.
    Condition(Option<Box<Node>>),
    /// An unknown group type or a malformed entry: matches nobody.
    Unknown,
}

/// Saved groups referenced by conditions: `$inGroup`/`$notInGroup` (bare
/// arrays of values or `type: "list"` groups) and `$savedGroup` references
/// (`type: "list"` or `type: "condition"` groups). Compiled once.
#[derive(Debug, Default)]
pub struct SavedGroups {
    groups: crate::attributes::FastMap<Box<str>, GroupEntry>,
}

impl SavedGroups {
    /// Builds saved groups from `{"groupId": [values...] | {"type": ...}}`.
    /// Problems are reported in the returned list; malformed groups match
    /// nobody.
    pub fn from_json(doc: &Value) -> (SavedGroups, Vec<String>) {
        let mut diags = Vec::new();
        let mut groups = crate::attributes::FastMap::default();
        match doc {
            Value::Object(m) => {
                for (k, v) in m {
                    let path = format!("savedGroups.{k}");
                    let entry = match v {
                        Value::Array(items) => GroupEntry::Bare(ValueSet::new(items, false)),
                        Value::Object(g) => match g.get("type").and_then(Value::as_str) {
                            Some("list") => {
                                let values = match g.get("values") {
                                    Some(Value::Array(items)) => Some(ValueSet::new(items, false)),
                                    _ => {
                                        diags.push(format!("{path}.values: expected an array"));
                                        None
                                    }
                                };
                                GroupEntry::List {
                                    key: g
                                        .get("attributeKey")
                                        .and_then(Value::as_str)
                                        .map(Path::new),
                                    values,
                                }
                            }
                            Some("condition") => match g.get("condition") {
                                Some(c @ Value::Object(_)) => {
                                    let mut cx = Compiler {
                                        diags: &mut diags,
                                        path: format!("{path}.condition"),
                                    };
                                    GroupEntry::Condition(Some(Box::new(cx.node(c, 0))))
                                }
                                _ => {
                                    diags.push(format!("{path}.condition: expected an object"));
                                    GroupEntry::Condition(None)
                                }
                            },
                            _ => {
                                diags.push(format!("{path}.type: unknown saved group type"));
                                GroupEntry::Unknown
                            }
                        },
                        _ => {
                            diags.push(format!("{path}: expected an array or an object"));
                            GroupEntry::Unknown
                        }
                    };
                    groups.insert(k.clone().into_boxed_str(), entry);
                }
            }
            Value::Null => {}
            _ => diags.push("savedGroups: expected an object".to_string()),
        }
        (SavedGroups { groups }, diags)
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub(crate) fn empty() -> &'static SavedGroups {
        static EMPTY: std::sync::OnceLock<SavedGroups> = std::sync::OnceLock::new();
        EMPTY.get_or_init(SavedGroups::default)
    }

    /// The values `$inGroup`/`$notInGroup` test: an unknown group is an
    /// empty list, a group that is not a list matches nobody (`None`).
    fn values(&self, group: &str) -> Option<Option<&ValueSet>> {
        match self.groups.get(group) {
            None => Some(None),
            Some(GroupEntry::Bare(v)) => Some(Some(v)),
            Some(GroupEntry::List {
                values: Some(v), ..
            }) => Some(Some(v)),
            Some(_) => None,
        }
    }
}

/// Saved group ids being resolved (cycle detection for `$savedGroup`).
struct Visited<'v> {
    id: &'v str,
    parent: Option<&'v Visited<'v>>,
}

/// What evaluation carries besides the root: saved groups and the chain of
/// `$savedGroup` references being resolved.
pub(crate) struct Scope<'g> {
    groups: &'g SavedGroups,
    visited: Option<&'g Visited<'g>>,
}

impl<'g> Scope<'g> {
    /// The top-level scope of an evaluation with these saved groups.
    #[inline(always)]
    pub(crate) fn new(groups: &'g SavedGroups) -> Self {
        Scope {
            groups,
            visited: None,
        }
    }

    fn visiting(&self, id: &str) -> bool {
        let mut v = self.visited;
        while let Some(node) = v {
            if node.id == id {
                return true;
            }
            v = node.parent;
        }
        false
    }
}

/// How a `$savedGroup` reference chooses the attribute of a list group.
#[derive(Debug)]
enum RefKey {
    /// Use the group's own `attributeKey`.
    FromGroup,
    /// Override with this attribute.
    Path(Path),
}

struct Compiler<'d> {
    diags: &'d mut Vec<String>,
    path: String,
}

fn is_operator_object(m: &serde_json::Map<String, Value>) -> bool {
    !m.is_empty() && m.keys().all(|k| k.starts_with('$'))
}

fn value_depth(v: &Value, limit: usize) -> usize {
    if limit == 0 {
        return 1;
    }
    match v {
        Value::Array(a) => {
            1 + a
                .iter()
                .map(|x| value_depth(x, limit - 1))
                .max()
                .unwrap_or(0)
        }
        Value::Object(m) => {
            1 + m
                .values()
                .map(|x| value_depth(x, limit - 1))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

impl Compiler<'_> {
    fn report(&mut self, msg: impl std::fmt::Display) {
        self.diags.push(format!("{}: {msg}", self.path));
    }

    fn scoped<T>(&mut self, seg: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        let len = self.path.len();
        if seg.starts_with('[') {
            self.path.push_str(seg);
        } else {
            self.path.push('.');
            self.path.push_str(seg);
        }
        let out = f(self);
        self.path.truncate(len);
        out
    }

    fn node(&mut self, doc: &Value, depth: usize) -> Node {
        if depth > MAX_DEPTH {
            self.report(format_args!("nested deeper than {MAX_DEPTH} levels"));
            return Node::False;
        }
        let m = match doc {
            Value::Object(m) => m,
            other => {
                self.report(format_args!(
                    "expected an object, found {}",
                    js::type_name(other)
                ));
                return Node::False;
            }
        };
        let mut parts = Vec::with_capacity(m.len());
        for (k, v) in m {
            let part = self.scoped(k, |cx| match k.as_str() {
                "$or" | "$nor" | "$and" => {
                    let list = match v {
                        Value::Array(list) => list,
                        _ => {
                            cx.report("expected an array of conditions");
                            return Node::False;
                        }
                    };
                    let children: Vec<Node> = list
                        .iter()
                        .enumerate()
                        .map(|(i, c)| cx.scoped(&format!("[{i}]"), |cx| cx.node(c, depth + 1)))
                        .collect();
                    match k.as_str() {
                        "$or" => Node::Or(children),
                        "$nor" => Node::Nor(children),
                        _ => Node::conjunction(children),
                    }
                }
                "$not" => Node::Not(Box::new(cx.node(v, depth + 1))),
                "$savedGroup" => {
                    let id = v.get("id").and_then(Value::as_str);
                    let key = match v.get("attributeKey") {
                        None => Some(RefKey::FromGroup),
                        Some(Value::String(k)) => Some(RefKey::Path(Path::new(k))),
                        Some(_) => None,
                    };
                    match (v.is_object(), id, key) {
                        (true, Some(id), Some(key)) => Node::SavedGroup(id.into(), key),
                        _ => {
                            cx.report("expected {\"id\": string, \"attributeKey\"?: string}");
                            Node::False
                        }
                    }
                }
                _ => {
                    let test = cx.test(v, depth + 1, false);
                    Node::Field(FieldTest::new(k, test))
                }
            });
            parts.push(part);
        }
        if parts.len() == 1 {
            parts.pop().unwrap_or(Node::False)
        } else {
            Node::conjunction(parts)
        }
    }

    fn test(&mut self, v: &Value, depth: usize, insensitive: bool) -> Test {
        if depth > MAX_DEPTH {
            self.report(format_args!("nested deeper than {MAX_DEPTH} levels"));
            return Test::Ops(vec![Op::Invalid]);
        }
        match v {
            Value::String(s) if insensitive => Test::StrI(s.to_lowercase().into_boxed_str()),
            Value::String(s) => Test::Str(s.as_str().into()),
            Value::Number(n) => Test::Num(js::num(n)),
            Value::Bool(b) => Test::Bool(*b),
            Value::Null => Test::Null,
            Value::Object(m) if is_operator_object(m) => {
                let mut ops: Vec<Op> = m
                    .iter()
                    .map(|(op, arg)| self.scoped(op, |cx| cx.op(op, arg, depth)))
                    .collect();
                if ops.len() == 1 {
                    Test::Op(ops.pop().unwrap_or(Op::Invalid))
                } else {
                    ops.sort_by_key(Op::cost);
                    Test::Ops(ops)
                }
            }
            _ => {
                if value_depth(v, MAX_DEPTH + 1) > MAX_DEPTH {
                    self.report(format_args!("value nested deeper than {MAX_DEPTH} levels"));
                    return Test::Ops(vec![Op::Invalid]);
                }
                Test::Json(v.clone())
            }
        }
    }

    fn op(&mut self, op: &str, arg: &Value, depth: usize) -> Op {
        let rel = |r| Op::Cmp(r, Prim::of(arg));
        match op {
            "$eq" => Op::Eq(arg.clone()),
            "$ne" => Op::Ne(arg.clone()),
            "$lt" => rel(Rel::Lt),
            "$lte" => rel(Rel::Lte),
            "$gt" => rel(Rel::Gt),
            "$gte" => rel(Rel::Gte),
            "$exists" => Op::Exists(js::truthy(arg)),
            "$in" | "$nin" | "$ini" | "$nini" => match arg {
                Value::Array(items) => {
                    let set = Box::new(ValueSet::new(items, op.ends_with('i')));
                    if op.starts_with("$n") {
                        Op::Nin(set)
                    } else {
                        Op::In(set)
                    }
                }
                _ => {
                    self.report("expected an array");
                    Op::Invalid
                }
            },
            "$inGroup" => Op::InGroup(js::to_js_string(arg).into_boxed_str()),
            "$notInGroup" => Op::NotInGroup(js::to_js_string(arg).into_boxed_str()),
            "$not" => Op::Not(Box::new(self.test(arg, depth + 1, false))),
            "$size" => Op::Size(Box::new(self.test(arg, depth + 1, false))),
            "$elemMatch" => match arg {
                Value::Object(m) if is_operator_object(m) => {
                    Op::ElemTest(Box::new(self.test(arg, depth + 1, false)))
                }
                Value::Object(_) => Op::ElemCond(Box::new(self.node(arg, depth + 1))),
                _ => {
                    self.report("expected an object");
                    Op::Invalid
                }
            },
            "$all" | "$alli" => match arg {
                Value::Array(items) => {
                    let insensitive = op == "$alli";
                    Op::All(
                        items
                            .iter()
                            .enumerate()
                            .map(|(i, t)| {
                                self.scoped(&format!("[{i}]"), |cx| {
                                    cx.test(t, depth + 1, insensitive)
                                })
                            })
                            .collect(),
                    )
                }
                _ => {
                    self.report("expected an array");
                    Op::Invalid
                }
            },
            "$regex" | "$regexi" => {
                let pattern = js::to_js_string(arg);
                if let Some(lit) = Literal::parse(&pattern, op == "$regexi") {
                    return Op::Literal(Box::new((lit, op == "$regexi")));
                }
                match RegexBuilder::new(&pattern)
                    .case_insensitive(op == "$regexi")
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    Ok(re) => Op::Regex(Box::new(re)),
                    Err(e) => {
                        let first = e.to_string();
                        let first = first.lines().last().unwrap_or("").trim().to_string();
                        self.report(format_args!("invalid regular expression: {first}"));
                        Op::Invalid
                    }
                }
            }
            "$type" => Op::Type(js::to_js_string(arg).into_boxed_str()),
            "$veq" | "$vne" | "$vgt" | "$vgte" | "$vlt" | "$vlte" => {
                let r = match op {
                    "$veq" => Rel::Eq,
                    "$vne" => Rel::Ne,
                    "$vgt" => Rel::Gt,
                    "$vgte" => Rel::Gte,
                    "$vlt" => Rel::Lt,
                    _ => Rel::Lte,
                };
                Op::Version(r, padded_version_string(arg).into_boxed_str())
            }
            _ => {
                self.report("unknown operator");
                Op::Invalid
            }
        }
    }
}

/// `paddedVersionString(input)` from the spec: strips a leading `v` and
/// build metadata, splits on `.`/`-`, appends `~` to plain `x.y.z` versions
/// and left-pads numeric parts to 5 characters so that versions compare as
/// strings.
pub fn padded_version_string(input: &Value) -> String {
    let mut s = SmallBuf::new();
    padded_version(input, &mut s);
    s.as_str().to_owned()
}

/// Receives the bytes of a padded version string.
trait Sink {
    fn push(&mut self, b: &[u8]);
}

impl Sink for SmallBuf {
    #[inline]
    fn push(&mut self, b: &[u8]) {
        SmallBuf::push(self, b)
    }
}

/// Compares streamed bytes with an expected byte string, without buffering.
struct CmpSink<'e> {
    expected: &'e [u8],
    pos: usize,
    result: Ordering,
}

impl Sink for CmpSink<'_> {
    #[inline]
    fn push(&mut self, b: &[u8]) {
        if self.result != Ordering::Equal {
            return;
        }
        for &x in b {
            match self.expected.get(self.pos) {
                None => {
                    self.result = Ordering::Greater;
                    return;
                }
                Some(&y) if x != y => {
                    self.result = x.cmp(&y);
                    return;
                }
                _ => self.pos += 1,
            }
        }
    }
}

/// Compares `paddedVersionString(actual)` with a padded expected version.
#[inline]
fn cmp_version(actual: &Value, expected: &str) -> Ordering {
    let ascii = match actual {
        Value::String(s) => s.is_ascii(),
        _ => true,
    };
    if ascii && expected.is_ascii() {
        let mut sink = CmpSink {
            expected: expected.as_bytes(),
            pos: 0,
            result: Ordering::Equal,
        };
        padded_version(actual, &mut sink);
        if sink.result == Ordering::Equal && sink.pos < expected.len() {
            return Ordering::Less;
        }
        return sink.result;
    }
    let mut buf = SmallBuf::new();
    padded_version(actual, &mut buf);
    js::cmp_js_str(buf.as_str(), expected)
}

fn padded_version<S: Sink>(input: &Value, out: &mut S) {
    let mut numbuf = js::StackStr::new();
    let raw: &str = match input {
        Value::String(s) if !s.is_empty() => s,
        Value::Number(n) => {
            if js::write_number(&mut numbuf, js::num(n)).is_err() {
                "0"
            } else {
                numbuf.as_str()
            }
        }
        _ => "0",
    };
    let mut s = raw.strip_prefix('v').unwrap_or(raw).as_bytes();
    if let Some(i) = s.iter().position(|&b| b == b'+') {
        s = &s[..i];
    }
    const SPACES: &[u8] = b"     ";
    let mut parts = 0;
    for part in s.split(|&b| b == b'.' || b == b'-') {
        if parts > 0 {
            out.push(b"-");
        }
        parts += 1;
        if !part.is_empty() && part.len() < 5 && part.iter().all(u8::is_ascii_digit) {
            out.push(&SPACES[..5 - part.len()]);
        }
        out.push(part);
    }
    if parts == 3 {
        out.push(b"-~");
    }
}

/// A byte buffer on the stack with heap fallback. Only whole UTF-8
/// sequences are pushed (input is split at ASCII bytes).
struct SmallBuf {
    stack: [u8; 64],
    len: usize,
    heap: Option<Vec<u8>>,
}

impl SmallBuf {
    #[inline]
    fn new() -> Self {
        SmallBuf {
            stack: [0; 64],
            len: 0,
            heap: None,
        }
    }

    #[inline]
    fn push(&mut self, b: &[u8]) {
        if let Some(h) = &mut self.heap {
            h.extend_from_slice(b);
        } else if self.len + b.len() <= self.stack.len() {
            self.stack[self.len..self.len + b.len()].copy_from_slice(b);
            self.len += b.len();
        } else {
            let mut h = Vec::with_capacity(self.len + b.len() + 32);
            h.extend_from_slice(&self.stack[..self.len]);
            h.extend_from_slice(b);
            self.heap = Some(h);
        }
    }

    #[inline]
    fn as_str(&self) -> &str {
        let bytes = match &self.heap {
            Some(h) => &h[..],
            None => &self.stack[..self.len],
        };
        std::str::from_utf8(bytes).unwrap_or("")
    }
}

/// Fast paths for regular expressions that are plain literals with
/// optional `^`/`$` anchors (`@example\.com$`, `^Mozilla`, `beta`).
#[derive(Debug)]
enum Literal {
    Contains(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Exact(Box<str>),
}

impl Literal {
    fn parse(pattern: &str, insensitive: bool) -> Option<Literal> {
        if insensitive && !pattern.is_ascii() {
            return None;
        }
        let (start, body) = match pattern.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let mut lit = String::with_capacity(body.len());
        let mut end = false;
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e) if !e.is_ascii_alphanumeric() && e.is_ascii() => lit.push(e),
                    _ => return None,
                },
                '$' if chars.as_str().is_empty() => end = true,
                '.' | '^' | '$' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' => {
                    return None
                }
                c => lit.push(c),
            }
        }
        if insensitive {
            lit = lit.to_ascii_lowercase();
        }
        let lit = lit.into_boxed_str();
        Some(match (start, end) {
            (true, true) => Literal::Exact(lit),
            (true, false) => Literal::Prefix(lit),
            (false, true) => Literal::Suffix(lit),
            (false, false) => Literal::Contains(lit),
        })
    }

    fn is_match(&self, s: &str, insensitive: bool) -> bool {
        if insensitive {
            let (h, n) = (s.as_bytes(), self.needle().as_bytes());
            return match self {
                Literal::Exact(_) => h.eq_ignore_ascii_case(n),
                Literal::Prefix(_) => h.len() >= n.len() && h[..n.len()].eq_ignore_ascii_case(n),
                Literal::Suffix(_) => {
                    h.len() >= n.len() && h[h.len() - n.len()..].eq_ignore_ascii_case(n)
                }
                Literal::Contains(_) => {
                    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
                }
            };
        }
        match self {
            Literal::Exact(l) => s == &**l,
            Literal::Prefix(l) => s.starts_with(&**l),
            Literal::Suffix(l) => s.ends_with(&**l),
            Literal::Contains(l) => s.contains(&**l),
        }
    }

    fn needle(&self) -> &str {
        match self {
            Literal::Exact(l) | Literal::Prefix(l) | Literal::Suffix(l) | Literal::Contains(l) => l,
        }
    }
}

fn eval_node<R: Root + ?Sized>(node: &Node, root: &R, cx: &Scope<'_>) -> bool {
    match node {
        Node::All(parts) => parts.iter().all(|p| eval_node(p, root, cx)),
        Node::Or(parts) => parts.is_empty() || parts.iter().any(|p| eval_node(p, root, cx)),
        Node::Nor(parts) => !(parts.is_empty() || parts.iter().any(|p| eval_node(p, root, cx))),
        Node::Not(inner) => !eval_node(inner, root, cx),
        Node::Field(f) => f.eval(root, cx),
        Node::Fields(list) => {
            for f in list.iter() {
                if !f.eval(root, cx) {
                    return false;
                }
            }
            true
        }
        Node::SavedGroup(id, key) => eval_saved_group(id, key, root, cx),
        Node::False => false,
    }
}

/// `evalSavedGroup`: a `$savedGroup` reference.
fn eval_saved_group<R: Root + ?Sized>(id: &str, key: &RefKey, root: &R, cx: &Scope<'_>) -> bool {
    if cx.visiting(id) {
        return false;
    }
    match cx.groups.groups.get(id) {
        Some(GroupEntry::List { key: own, values }) => {
            let path = match key {
                RefKey::Path(p) => Some(p),
                RefKey::FromGroup => own.as_ref(),
            };
            match (path, values) {
                (Some(p), Some(v)) => v.is_in(p.get(root)),
                _ => false,
            }
        }
        Some(GroupEntry::Condition(Some(node))) => {
            let visited = Visited {
                id,
                parent: cx.visited,
            };
            let inner = Scope {
                groups: cx.groups,
                visited: Some(&visited),
            };
            eval_node(node, root, &inner)
        }
        _ => false,
    }
}

#[inline]
fn eval_test(test: &Test, actual: &Value, cx: &Scope<'_>) -> bool {
    match test {
        Test::Str(s) => match actual {
            Value::String(a) => js::str_eq(a, s),
            _ => js::with_js_string(actual, |a| a == &**s),
        },
        Test::StrI(s) => js::with_js_string(actual, |a| {
            if a.is_ascii() {
                a.eq_ignore_ascii_case(s)
            } else {
                a.to_lowercase() == **s
            }
        }),
        Test::Num(n) => js::to_number(actual) == *n,
        Test::Bool(b) => !actual.is_null() && js::truthy(actual) == *b,
        Test::Null => actual.is_null(),
        Test::Json(v) => js::json_eq(actual, v),
        Test::Op(op) => eval_op(op, actual, cx),
        Test::Ops(ops) => ops.iter().all(|op| eval_op(op, actual, cx)),
    }
}

#[inline]
fn eval_op(op: &Op, actual: &Value, cx: &Scope<'_>) -> bool {
    match op {
        Op::Eq(v) => js::strict_eq(actual, v),
        Op::Ne(v) => !js::strict_eq(actual, v),
        Op::Cmp(rel, expected) => js::js_compare(actual, expected).is_some_and(|o| rel.holds(o)),
        Op::Exists(want) => actual.is_null() != *want,
        Op::In(set) => set.is_in(actual),
        Op::Nin(set) => !set.is_in(actual),
        Op::InGroup(g) => match cx.groups.values(g) {
            Some(Some(v)) => v.is_in(actual),
            Some(None) => false,
            None => false,
        },
        Op::NotInGroup(g) => match cx.groups.values(g) {
            Some(Some(v)) => !v.is_in(actual),
            Some(None) => true,
            None => false,
        },
        Op::Not(t) => !eval_test(t, actual, cx),
        Op::Size(t) => match actual {
            Value::Array(a) => eval_test(t, &Value::from(a.len()), cx),
            _ => false,
        },
        Op::ElemTest(t) => match actual {
            Value::Array(a) => a.iter().any(|el| !el.is_null() && eval_test(t, el, cx)),
            _ => false,
        },
        Op::ElemCond(n) => match actual {
            Value::Array(a) => a.iter().any(|el| !el.is_null() && eval_node(n, el, cx)),
            _ => false,
        },
        Op::All(tests) => match actual {
            Value::Array(a) => tests
                .iter()
                .all(|t| a.iter().any(|el| eval_test(t, el, cx))),
            _ => false,
        },
        Op::Regex(re) => js::with_js_string(actual, |s| re.is_match(s)),
        Op::Literal(l) => js::with_js_string(actual, |s| l.0.is_match(s, l.1)),
        Op::Type(t) => js::type_name(actual) == &**t,
        Op::Version(rel, expected) => rel.holds(cmp_version(actual, expected)),
        Op::Invalid => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn padded_versions() {
        assert_eq!(
            padded_version_string(&json!("1.2.3")),
            "    1-    2-    3-~"
        );
        assert_eq!(
            padded_version_string(&json!("v1.2.3-rc.1+build")),
            "    1-    2-    3-rc-    1"
        );
        assert_eq!(padded_version_string(&json!(null)), "    0");
    }

    #[test]
    fn malformed_reports() {
        let (c, d) = Condition::compile(&json!({"a": {"$regx": 1}, "b": {"$in": 3}}));
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(!c.eval(&crate::Attributes::new()));
        let (_, d) = Condition::compile(&json!("str"));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn literal_fast_path_matches_regex() {
        let patterns = [
            "@example\\.com$",
            "^Mozilla",
            "beta",
            "^exact$",
            "",
            "^",
            "$",
            "a\\$",
            "\\^x",
            "A.B",
            "(x)",
            "\\d",
            "ab\\/c",
            "^$",
        ];
        let subjects = [
            "me@example.com",
            "Mozilla/5.0",
            "alphabeta",
            "exact",
            "",
            "a$",
            "^x",
            "AXB",
            "x",
            "1",
            "ab/c",
            "ME@EXAMPLE.COM",
            "mozilla",
            "EXACT",
        ];
        for p in patterns {
            for insensitive in [false, true] {
                let re = RegexBuilder::new(p)
                    .case_insensitive(insensitive)
                    .build()
                    .unwrap();
                if let Some(lit) = Literal::parse(p, insensitive) {
                    for s in subjects {
                        assert_eq!(
                            lit.is_match(s, insensitive),
                            re.is_match(s),
                            "{p:?} {s:?} {insensitive}"
                        );
                    }
                } else {
                    assert!(
                        ["A.B", "(x)", "\\d"].contains(&p),
                        "{p:?} should be a literal"
                    );
                }
            }
        }
    }

    #[test]
    fn large_in_list_uses_set() {
        let list: Vec<Value> = (0..100)
            .map(|i| json!(format!("u{i}")))
            .chain((0..50).map(|i| json!(i)))
            .collect();
        let (c, _) = Condition::compile(&json!({"id": {"$in": list}}));
        let a = |v: Value| crate::Attributes::from_json(&json!({ "id": v }));
        assert!(c.eval(&a(json!("u42"))));
        assert!(c.eval(&a(json!(42.0))));
        assert!(!c.eval(&a(json!("42"))));
        assert!(!c.eval(&a(json!("u100"))));
    }
}
