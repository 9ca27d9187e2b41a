//! Templates: parses minijinja templates and lists the variables they read, with the byte range
//! of each reference, so that the compiler can check them against the scope of each step.
//!
//! This uses minijinja's parser (`unstable_machinery`, pinned to an exact version) rather than a
//! second, hand-written expression grammar: what weft checks is exactly what the runtime runs.

use std::ops::Range;

use minijinja::machinery::{Token, ast, parse, tokenize};
use minijinja::syntax::SyntaxConfig;

/// One segment of a reference chain: `steps.contact["amount"]` is `steps`, `contact`, `amount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefSeg {
    Name(String),
    /// A subscript computed at run time (`steps[name]`).
    Dynamic,
}

/// A variable read by a template, e.g. `config.crm_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub segs: Vec<RefSeg>,
    /// Byte range in the template text.
    pub span: Range<usize>,
}

impl Reference {
    pub fn name(&self, i: usize) -> Option<&str> {
        match self.segs.get(i) {
            Some(RefSeg::Name(n)) => Some(n),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TemplateError {
    pub message: String,
    /// Byte range in the template text, when minijinja knows it.
    pub span: Option<Range<usize>>,
    /// An expression with more than [`MAX_OPERATORS`] operators (reported as `too-deep`).
    pub too_deep: bool,
}

/// The most operators (`.`, `|`, `[`, `(`, `+`, `and`, ...) one `{{ }}` or `{% %}` may hold.
/// Every level of an expression's syntax tree needs one, so this bounds its depth: minijinja
/// builds attribute, filter and operator chains in loops but walks and drops them recursively,
/// and `{{ x.a.a.a… }}` 50,000 deep would overflow the stack of the compiler and the runtime.
pub const MAX_OPERATORS: usize = 256;

/// Whether a string is a template (as opposed to a literal).
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// Functions minijinja provides globally; calling them is not reading a variable.
const GLOBAL_FUNCTIONS: &[&str] = &["range", "dict", "namespace", "debug", "now"];

/// Parses a template and lists the variables it reads from its context.
pub fn references(text: &str) -> Result<Vec<Reference>, TemplateError> {
    check_operators(text)?;
    let stmt = parse(text, "<template>", SyntaxConfig::default()).map_err(|e| TemplateError {
        message: e.detail().unwrap_or("syntax error").to_string(),
        span: e.range(),
        too_deep: false,
    })?;
    let mut walker = Walker::default();
    walker.stmt(&stmt);
    Ok(walker.refs)
}

/// Whether a token nests an expression one level deeper.
fn is_operator(token: &Token<'_>) -> bool {
    match token {
        Token::Ident(word) => matches!(*word, "and" | "or" | "not" | "is" | "in" | "if"),
        Token::Dot
        | Token::Pipe
        | Token::BracketOpen
        | Token::ParenOpen
        | Token::BraceOpen
        | Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::FloorDiv
        | Token::Pow
        | Token::Mod
        | Token::Tilde
        | Token::Eq
        | Token::Ne
        | Token::Gt
        | Token::Gte
        | Token::Lt
        | Token::Lte => true,
        _ => false,
    }
}

/// Refuses a block with more than [`MAX_OPERATORS`] operators, before minijinja parses it
/// (the lexer is a loop; it never recurses).
fn check_operators(text: &str) -> Result<(), TemplateError> {
    let mut count = 0;
    let mut block = 0..0;
    for token in tokenize(text, false, SyntaxConfig::default()) {
        // A lexer error is reported by the parser.
        let Ok((token, span)) = token else {
            return Ok(());
        };
        match token {
            Token::VariableStart | Token::BlockStart => {
                count = 0;
                block = span.start_offset as usize..span.end_offset as usize;
            }
            t if is_operator(&t) => {
                count += 1;
                if count > MAX_OPERATORS {
                    return Err(TemplateError {
                        message: format!("more than {MAX_OPERATORS} operators in one expression"),
                        span: Some(block),
                        too_deep: true,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[derive(Default)]
struct Walker {
    refs: Vec<Reference>,
    /// Names bound by `for` and `set` inside the template; a stack of scopes.
    locals: Vec<Vec<String>>,
}

impl Walker {
    fn is_local(&self, name: &str) -> bool {
        self.locals.iter().flatten().any(|l| l == name)
    }

    fn bind(&mut self, target: &ast::Expr<'_>) {
        let scope = self.locals.last_mut();
        let names = assigned_names(target);
        match scope {
            Some(scope) => scope.extend(names),
            None => self.locals.push(names),
        }
    }

    fn body(&mut self, stmts: &[ast::Stmt<'_>]) {
        for s in stmts {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, stmt: &ast::Stmt<'_>) {
        match stmt {
            ast::Stmt::Template(t) => self.body(&t.children),
            ast::Stmt::EmitExpr(e) => self.expr(&e.expr),
            ast::Stmt::EmitRaw(_) => {}
            ast::Stmt::ForLoop(f) => {
                self.expr(&f.iter);
                self.locals.push(vec!["loop".to_string()]);
                self.bind(&f.target);
                if let Some(filter) = &f.filter_expr {
                    self.expr(filter);
                }
                self.body(&f.body);
                self.locals.pop();
                self.body(&f.else_body);
            }
            ast::Stmt::IfCond(i) => {
                self.expr(&i.expr);
                self.body(&i.true_body);
                self.body(&i.false_body);
            }
            ast::Stmt::WithBlock(w) => {
                for (_, value) in &w.assignments {
                    self.expr(value);
                }
                self.locals.push(Vec::new());
                for (target, _) in &w.assignments {
                    self.bind(target);
                }
                self.body(&w.body);
                self.locals.pop();
            }
            ast::Stmt::Set(s) => {
                self.expr(&s.expr);
                self.bind(&s.target);
            }
            ast::Stmt::SetBlock(s) => {
                self.body(&s.body);
                self.bind(&s.target);
            }
            ast::Stmt::AutoEscape(a) => self.body(&a.body),
            ast::Stmt::FilterBlock(f) => self.body(&f.body),
            ast::Stmt::Do(d) => self.call(&d.call),
            // Blocks, macros, imports and includes have no use in a one-value template; their
            // variables are left to the runtime's strict undefined check.
            _ => {}
        }
    }

    fn call(&mut self, call: &ast::Call<'_>) {
        match &call.expr {
            ast::Expr::Var(v) if GLOBAL_FUNCTIONS.contains(&v.id) => {}
            // A method call (`x.items()`): the receiver is what is read.
            ast::Expr::GetAttr(g) => self.expr(&g.expr),
            other => self.expr(other),
        }
        for arg in &call.args {
            self.call_arg(arg);
        }
    }

    fn call_arg(&mut self, arg: &ast::CallArg<'_>) {
        match arg {
            ast::CallArg::Pos(e)
            | ast::CallArg::Kwarg(_, e)
            | ast::CallArg::PosSplat(e)
            | ast::CallArg::KwargSplat(e) => self.expr(e),
        }
    }

    fn expr(&mut self, expr: &ast::Expr<'_>) {
        if let Some((segs, span)) = self.chain(expr) {
            self.refs.push(Reference { segs, span });
            return;
        }
        match expr {
            ast::Expr::Var(_) | ast::Expr::Const(_) => {}
            ast::Expr::Slice(s) => {
                self.expr(&s.expr);
                for e in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(e);
                }
            }
            ast::Expr::UnaryOp(u) => self.expr(&u.expr),
            ast::Expr::BinOp(b) => {
                self.expr(&b.left);
                self.expr(&b.right);
            }
            ast::Expr::Compare(c) => {
                self.expr(&c.expr);
                for op in &c.ops {
                    self.expr(&op.expr);
                }
            }
            ast::Expr::IfExpr(i) => {
                self.expr(&i.test_expr);
                self.expr(&i.true_expr);
                if let Some(f) = &i.false_expr {
                    self.expr(f);
                }
            }
            ast::Expr::Filter(f) => {
                if let Some(e) = &f.expr {
                    self.expr(e);
                }
                for arg in &f.args {
                    self.call_arg(arg);
                }
            }
            ast::Expr::Test(t) => {
                self.expr(&t.expr);
                for arg in &t.args {
                    self.call_arg(arg);
                }
            }
            ast::Expr::GetAttr(g) => self.expr(&g.expr),
            ast::Expr::GetItem(g) => {
                self.expr(&g.expr);
                self.expr(&g.subscript_expr);
            }
            ast::Expr::Call(c) => self.call(c),
            ast::Expr::List(l) => l.items.iter().for_each(|e| self.expr(e)),
            ast::Expr::Tuple(t) => t.items.iter().for_each(|e| self.expr(e)),
            ast::Expr::Map(m) => {
                m.keys.iter().for_each(|e| self.expr(e));
                m.values.iter().for_each(|e| self.expr(e));
            }
        }
    }

    /// A chain of attribute and constant-subscript lookups rooted in a context variable.
    fn chain(&mut self, expr: &ast::Expr<'_>) -> Option<(Vec<RefSeg>, Range<usize>)> {
        let span = expr_span(expr);
        match expr {
            ast::Expr::Var(v) => {
                if self.is_local(v.id) {
                    None
                } else {
                    Some((vec![RefSeg::Name(v.id.to_string())], span))
                }
            }
            // minijinja's span of an attribute lookup starts late: take the start of the
            // chain's root variable and the end of the whole lookup.
            ast::Expr::GetAttr(g) => {
                let (mut segs, inner) = self.chain(&g.expr)?;
                segs.push(RefSeg::Name(g.name.to_string()));
                Some((segs, inner.start..span.end.max(inner.end)))
            }
            ast::Expr::GetItem(g) => {
                let (mut segs, inner) = self.chain(&g.expr)?;
                match &g.subscript_expr {
                    ast::Expr::Const(c) => match c.value.as_str() {
                        Some(s) => segs.push(RefSeg::Name(s.to_string())),
                        None => segs.push(RefSeg::Dynamic),
                    },
                    other => {
                        self.expr(other);
                        segs.push(RefSeg::Dynamic);
                    }
                }
                Some((segs, inner.start..span.end.max(inner.end)))
            }
            _ => None,
        }
    }
}

fn assigned_names(target: &ast::Expr<'_>) -> Vec<String> {
    match target {
        ast::Expr::Var(v) => vec![v.id.to_string()],
        ast::Expr::List(l) => l.items.iter().flat_map(assigned_names).collect(),
        ast::Expr::Tuple(t) => t.items.iter().flat_map(assigned_names).collect(),
        _ => Vec::new(),
    }
}

fn expr_span(expr: &ast::Expr<'_>) -> Range<usize> {
    let span = match expr {
        ast::Expr::Var(s) => s.span(),
        ast::Expr::Const(s) => s.span(),
        ast::Expr::Slice(s) => s.span(),
        ast::Expr::UnaryOp(s) => s.span(),
        ast::Expr::BinOp(s) => s.span(),
        ast::Expr::Compare(s) => s.span(),
        ast::Expr::IfExpr(s) => s.span(),
        ast::Expr::Filter(s) => s.span(),
        ast::Expr::Test(s) => s.span(),
        ast::Expr::GetAttr(s) => s.span(),
        ast::Expr::GetItem(s) => s.span(),
        ast::Expr::Call(s) => s.span(),
        ast::Expr::List(s) => s.span(),
        ast::Expr::Tuple(s) => s.span(),
        ast::Expr::Map(s) => s.span(),
    };
    span.start_offset as usize..span.end_offset as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        references(text)
            .unwrap()
            .iter()
            .map(|r| {
                r.segs
                    .iter()
                    .map(|s| match s {
                        RefSeg::Name(n) => n.clone(),
                        RefSeg::Dynamic => "*".into(),
                    })
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .collect()
    }

    #[test]
    fn lists_chains_with_spans() {
        let text = "{{ steps.contact.amount >= config.min_amount }}";
        let refs = references(text).unwrap();
        assert_eq!(names(text), ["steps.contact.amount", "config.min_amount"]);
        assert_eq!(&text[refs[0].span.clone()], "steps.contact.amount");
        assert_eq!(&text[refs[1].span.clone()], "config.min_amount");
        let text = "{{ trigger.body.customer['id'] }}";
        assert_eq!(
            &text[references(text).unwrap()[0].span.clone()],
            "trigger.body.customer['id']"
        );
    }

    #[test]
    fn subscripts_filters_and_locals() {
        assert_eq!(
            names("{{ instance.flows['order-created'].url }}"),
            ["instance.flows.order-created.url"]
        );
        assert_eq!(
            names("{{ items | map(attribute='updated_at') | max }}"),
            ["items"]
        );
        assert_eq!(
            names("{% for l in trigger.body.lines %}{{ l.sku }}{{ loop.index }}{% endfor %}"),
            ["trigger.body.lines"]
        );
        assert_eq!(names("{{ steps[config.key] }}"), ["config.key", "steps.*"]);
        assert_eq!(names("{{ range(3) | list }}"), Vec::<String>::new());
    }

    #[test]
    fn syntax_errors_carry_a_range() {
        let err = references("{{ trigger.body. }}").unwrap_err();
        assert!(err.span.is_some());
        assert!(!err.message.is_empty());
    }
}
