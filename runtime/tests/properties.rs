//! Property tests of the runtime's bounds: the gateway's body reading under a byte budget,
//! and the size of whatever a template renders.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use proptest::prelude::*;
use tokio::sync::Semaphore;
use weft_runtime::gateway::{BodyError, collect_within};
use weft_runtime::render::{self, Renderer};

fn body_of(chunks: &[Vec<u8>]) -> Body {
    let items: Vec<Result<Bytes, std::io::Error>> =
        chunks.iter().map(|c| Ok(Bytes::from(c.clone()))).collect();
    Body::from_stream(futures_util::stream::iter(items))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A body is read whole exactly when it fits the limit and the budget; whatever happens,
    /// the budget is whole again once the call is done.
    #[test]
    fn bodies_respect_limit_and_budget(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..12),
        limit in 0usize..20_000,
        budget_kib in 1usize..24,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let budget = Arc::new(Semaphore::new(budget_kib));
        let total: usize = chunks.iter().map(Vec::len).sum();
        let result = rt.block_on(collect_within(body_of(&chunks), limit, &budget));
        match &result {
            Ok((bytes, permits)) => {
                prop_assert!(total <= limit);
                prop_assert_eq!(bytes.len(), total);
                prop_assert_eq!(bytes.to_vec(), chunks.concat());
                let held: usize = permits.iter().map(|p| p.num_permits()).sum();
                prop_assert_eq!(held, total.div_ceil(1024));
            }
            Err(BodyError::TooLarge) => prop_assert!(total > limit),
            Err(BodyError::OverBudget) => prop_assert!(total.div_ceil(1024) > budget_kib),
            Err(BodyError::Broken) => prop_assert!(false, "no broken stream here"),
        }
        drop(result);
        prop_assert_eq!(budget.available_permits(), budget_kib);
    }

    /// Whatever the template and the input, a render either fits the output bound or fails
    /// with a clear error — it never builds an unbounded value.
    #[test]
    fn rendered_values_fit_the_bound(
        shape in 0usize..6,
        n in 0i64..5_000_000,
        text in "[a-z]{0,40}",
    ) {
        render::set_max_output(64 * 1024);
        let template = [
            "{{ [1,2,3] * n }}",
            "x{{ [text] * n }}",
            "{{ text * n }}",
            "{{ ({'k': text}|items|list) * n }}",
            "{{ range(n % 1000) | list }}",
            "{{ ([text] * n) | tojson(indent=n) }}",
        ][shape];
        let r = Renderer::new();
        let compiled = r.compile(&serde_json::json!(template)).unwrap();
        let ctx = render::context(&serde_json::json!({ "n": n, "text": text }));
        match render::render(&compiled, &ctx) {
            Ok(v) => {
                let size = serde_json::to_vec(&v).unwrap().len();
                prop_assert!(size <= 2 * render::max_output(), "{template}: {size} bytes");
            }
            Err(e) => {
                let e = e.to_string();
                prop_assert!(
                    e.contains("exceeds") || e.contains("too large") || e.contains("fuel"),
                    "{template}: {e}"
                );
            }
        }
    }
}
