//! Kill -9 in the middle of a load: every event the gateway answered 2xx reaches the end of its
//! flow after a restart; duplicates only for work in flight at the crash.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{CountingSink, WeftProcess, binary, free_port, reference_repo, sign};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_survive_kill_9() {
    let (sink, sink_addr) = CountingSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    reference_repo(&repo, sink_addr);
    let data = dir.path().join("data");
    let log = dir.path().join("weft.log");
    let port = free_port();
    let mut weft = WeftProcess::spawn(&binary(), &repo, &data, port, &log);
    weft.wait_healthy().await;

    // 24 senders post events until told to stop; the process is killed while they run.
    let client = support::http_client(Duration::from_secs(5));
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..24 {
        let (client, accepted, stop) = (client.clone(), accepted.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..400 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("e-{s}-{i}");
                let body = serde_json::to_vec(
                    &serde_json::json!({ "id": id, "amount_cents": 1000, "sent": 0 }),
                )
                .unwrap();
                let r = client
                    .post(format!(
                        "http://127.0.0.1:{port}/hooks/acme/reference/orders"
                    ))
                    .header("content-type", "application/json")
                    .header("X-Signature", sign(&body))
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => accepted.lock().unwrap().push(id),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    // Kill once a good share is accepted, while work is certainly in flight.
    for _ in 0..400 {
        if accepted.lock().unwrap().len() >= 1500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at_kill = accepted.lock().unwrap().len();
    let delivered_at_kill = sink.distinct();
    weft.kill9();
    // Senders keep going against the dead port for a moment (refused: not accepted), then stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    assert!(
        at_kill > 100,
        "the load was running when the process was killed ({at_kill} accepted)"
    );
    assert!(
        delivered_at_kill < accepted.len(),
        "some accepted work was still in flight at the kill ({delivered_at_kill} of {})",
        accepted.len()
    );

    // Restart on the same data: the backlog resumes.
    let weft = WeftProcess::spawn(&binary(), &repo, &data, port, &log);
    weft.wait_healthy().await;
    for _ in 0..1200 {
        let all_delivered = {
            let seen = sink.seen.lock().unwrap();
            accepted.iter().all(|id| seen.contains_key(id))
        };
        if all_delivered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen = sink.seen.lock().unwrap().clone();
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} accepted events were lost, e.g. {:?}; log: {}",
        lost.len(),
        &lost[..lost.len().min(5)],
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let duplicates = seen.values().filter(|(n, _)| *n > 1).count();
    eprintln!(
        "accepted {}, delivered {} distinct, {} delivered more than once (in flight at the kill)",
        accepted.len(),
        seen.len(),
        duplicates
    );
    assert!(
        duplicates <= 24 * 4 + 64,
        "duplicates only for work in flight: {duplicates}"
    );
    drop(weft);
}
