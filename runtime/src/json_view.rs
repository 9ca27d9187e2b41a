//! JSON documents as templates see them, converted only where a template reads: a message's
//! trigger and step outputs may be large, and a step's templates read a few fields of them.
//! Converting the whole document into minijinja values for every step run was a tenth of the
//! engine's work per event (docs/performance.md).

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use serde_json::{Map, Value};

/// Where a view's document lives: a whole value, or the map of step outputs.
#[derive(Debug, Clone)]
pub enum Document {
    Value(Arc<Value>),
    Map(Arc<Map<String, Value>>),
}

/// One step down into a document.
#[derive(Debug, Clone)]
enum Segment {
    Key(Arc<str>),
    Index(usize),
}

/// A node of a document: an object or an array (leaves are converted when read).
#[derive(Debug)]
pub struct JsonView {
    document: Document,
    path: Vec<Segment>,
}

/// What a path leads to.
enum Node<'a> {
    Map(&'a Map<String, Value>),
    Seq(&'a [Value]),
    Leaf(&'a Value),
}

impl JsonView {
    /// The template value of a whole document.
    pub fn of(document: Document) -> minijinja::Value {
        let view = JsonView {
            document,
            path: Vec::new(),
        };
        match view.node() {
            Some(Node::Leaf(v)) => leaf(v),
            _ => minijinja::Value::from_object(view),
        }
    }

    fn node(&self) -> Option<Node<'_>> {
        let mut node = match &self.document {
            Document::Value(v) => Node::of(v),
            Document::Map(m) => Node::Map(m),
        };
        for segment in &self.path {
            let next = match (node, segment) {
                (Node::Map(m), Segment::Key(k)) => m.get(&**k)?,
                (Node::Seq(items), Segment::Index(i)) => items.get(*i)?,
                _ => return None,
            };
            node = Node::of(next);
        }
        Some(node)
    }

    /// The template value of the child reached by `segment` from here.
    fn child(&self, segment: Segment, value: &Value) -> minijinja::Value {
        match value {
            Value::Object(_) | Value::Array(_) => {
                let mut path = self.path.clone();
                path.push(segment);
                minijinja::Value::from_object(JsonView {
                    document: self.document.clone(),
                    path,
                })
            }
            other => leaf(other),
        }
    }
}

/// A scalar as templates see it: as the converted document would have it.
fn leaf(value: &Value) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

impl<'a> Node<'a> {
    fn of(value: &'a Value) -> Node<'a> {
        match value {
            Value::Object(m) => Node::Map(m),
            Value::Array(items) => Node::Seq(items),
            leaf => Node::Leaf(leaf),
        }
    }
}

impl Object for JsonView {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            Some(Node::Seq(_)) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        match self.node()? {
            Node::Map(m) => {
                let name = key.as_str()?;
                let value = m.get(name)?;
                Some(self.child(Segment::Key(name.into()), value))
            }
            Node::Seq(items) => {
                let index = key.as_usize()?;
                Some(self.child(Segment::Index(index), items.get(index)?))
            }
            Node::Leaf(_) => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
            // Sorted, as minijinja's own maps iterate (and as converted documents did).
            Some(Node::Map(m)) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort_unstable();
                Enumerator::Values(
                    keys.into_iter()
                        .map(|k| minijinja::Value::from(k.as_str()))
                        .collect(),
                )
            }
            Some(Node::Seq(items)) => Enumerator::Seq(items.len()),
            _ => Enumerator::Empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, doc: Value) -> String {
        let env = minijinja::Environment::new();
        let ctx = minijinja::context! { doc => JsonView::of(Document::Value(Arc::new(doc))) };
        env.render_str(template, ctx).unwrap()
    }

    #[test]
    fn reads_like_the_converted_document() {
        let doc = json!({ "body": { "id": "a-1", "n": 25.0, "tags": ["x", "y"], "nested": { "k": [1, { "d": true }] } }, "query": {} });
        let cases = [
            "{{ doc.body.id }}",
            "{{ doc.body.n }} {{ doc.body.n / 100 }}",
            "{{ doc.body.tags[1] }} {{ doc.body.tags | length }} {{ doc.body.tags | join(',') }}",
            "{{ doc.body.nested.k[1].d }}",
            "{% for k, v in doc.body | items %}{{ k }};{% endfor %}",
            "{{ doc.body | tojson }}",
            "{{ doc.query | length }} {{ 'id' in doc.body }} {{ doc.body.missing is undefined }}",
            "{{ doc.body.tags }}",
            "{{ doc.body }}",
            "{{ doc.body.tags == ['x', 'y'] }} {{ doc.body.nested.k | first }} {{ doc.body | dictsort | first }}",
        ];
        for case in cases {
            let env = minijinja::Environment::new();
            let converted = env
                .render_str(case, minijinja::context! { doc => minijinja::Value::from(minijinja::value::Serde(&doc)) })
                .unwrap();
            assert_eq!(render(case, doc.clone()), converted, "{case}");
        }
    }
}
