//! Webhook authentication: HMAC-SHA256 over the raw body, Standard Webhooks, bearer tokens.
//! Every comparison is constant-time.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Standard Webhooks: how far a timestamp may be from now.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// A webhook's resolved authentication.
#[derive(Clone)]
pub enum WebhookAuth {
    None,
    Hmac { key: SigningKey, header: String },
    Standard { key: SigningKey },
    Bearer { token: Vec<u8> },
}

/// An HMAC-SHA256 key, set up once: each call starts from a copy of the keyed state instead of
/// hashing the key's inner and outer pads again.
#[derive(Clone)]
pub struct SigningKey(HmacSha256);

impl SigningKey {
    pub fn new(key: &[u8]) -> SigningKey {
        SigningKey(HmacSha256::new_from_slice(key).expect("HMAC takes any key length"))
    }

    fn mac(&self) -> HmacSha256 {
        self.0.clone()
    }
}

impl WebhookAuth {
    /// HMAC-SHA256 of the raw body with `secret`, hex in `header`.
    pub fn hmac(secret: &[u8], header: impl Into<String>) -> WebhookAuth {
        WebhookAuth::Hmac {
            key: SigningKey::new(secret),
            header: header.into(),
        }
    }

    /// Standard Webhooks with `secret` (`whsec_<base64>`, or plain bytes).
    pub fn standard(secret: &str) -> WebhookAuth {
        WebhookAuth::Standard {
            key: SigningKey::new(&standard_key(secret)),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// A Standard Webhooks id, for de-duplication.
    OkWithId(String),
    Denied(&'static str),
}

/// The key of a Standard Webhooks secret (`whsec_<base64>`; other strings are used as bytes).
pub fn standard_key(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    }
}

/// What can be refused from the headers alone, before the body is read: a missing signature
/// header, a Standard Webhooks timestamp out of tolerance, a wrong bearer token.
pub fn precheck(auth: &WebhookAuth, headers: &axum::http::HeaderMap) -> Option<&'static str> {
    let has = |name: &str| headers.contains_key(name);
    match auth {
        WebhookAuth::None => None,
        WebhookAuth::Hmac { header, .. } => (!has(header)).then_some("missing signature header"),
        WebhookAuth::Standard { .. } => {
            if !(has("webhook-id") && has("webhook-timestamp") && has("webhook-signature")) {
                return Some("missing webhook-id, webhook-timestamp or webhook-signature");
            }
            None
        }
        WebhookAuth::Bearer { .. } => match verify(auth, headers, &[], 0) {
            Verdict::Denied(why) => Some(why),
            _ => None,
        },
    }
}

/// Checks a call's signature (or token) over its raw body.
pub fn verify(
    auth: &WebhookAuth,
    headers: &axum::http::HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Verdict {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match auth {
        WebhookAuth::None => Verdict::Ok,
        WebhookAuth::Hmac { key, header: name } => {
            let Some(value) = header(name) else {
                return Verdict::Denied("missing signature header");
            };
            let hex_sig = value.trim().strip_prefix("sha256=").unwrap_or(value.trim());
            let Ok(sig) = hex::decode(hex_sig) else {
                return Verdict::Denied("malformed signature");
            };
            let mut mac = key.mac();
            mac.update(body);
            if mac.verify_slice(&sig).is_ok() {
                Verdict::Ok
            } else {
                Verdict::Denied("bad signature")
            }
        }
        WebhookAuth::Standard { key } => {
            let (Some(id), Some(ts), Some(sigs)) = (
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
            ) else {
                return Verdict::Denied(
                    "missing webhook-id, webhook-timestamp or webhook-signature",
                );
            };
            let Ok(ts_num) = ts.trim().parse::<i64>() else {
                return Verdict::Denied("malformed timestamp");
            };
            if now_secs.abs_diff(ts_num) > TOLERANCE_SECS.unsigned_abs() {
                return Verdict::Denied("timestamp outside the tolerance");
            }
            let mut mac = key.mac();
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(ts.trim().as_bytes());
            mac.update(b".");
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            let matched = sigs.split_whitespace().any(|s| {
                s.strip_prefix("v1,")
                    .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                    .is_some_and(|sig| bool::from(sig.as_slice().ct_eq(expected.as_slice())))
            });
            if matched {
                Verdict::OkWithId(id.to_string())
            } else {
                Verdict::Denied("bad signature")
            }
        }
        WebhookAuth::Bearer { token } => {
            let given = header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            // Compare over equal lengths so that timing does not reveal the length either.
            let equal_len = given.len() == token.len();
            let probe: &[u8] = if equal_len { given.as_bytes() } else { token };
            if bool::from(probe.ct_eq(token)) && equal_len {
                Verdict::Ok
            } else {
                Verdict::Denied("bad token")
            }
        }
    }
}

/// Signs a body the way `hmac_sha256` expects (for tests and benchmarks).
pub fn sign_hmac(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Signs a body the way Standard Webhooks expects: the `webhook-signature` value.
pub fn sign_standard(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("any key");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn hmac_accepts_both_forms_and_rejects_tampering() {
        let auth = WebhookAuth::hmac(b"s3cret", "X-Signature");
        let body = br#"{"id":1}"#;
        let sig = sign_hmac(b"s3cret", body);
        let mut h = HeaderMap::new();
        h.insert("x-signature", HeaderValue::from_str(&sig).unwrap());
        assert_eq!(verify(&auth, &h, body, 0), Verdict::Ok);
        h.insert(
            "x-signature",
            HeaderValue::from_str(sig.trim_start_matches("sha256=")).unwrap(),
        );
        assert_eq!(verify(&auth, &h, body, 0), Verdict::Ok);
        assert!(matches!(
            verify(&auth, &h, b"{\"id\":2}", 0),
            Verdict::Denied(_)
        ));
        assert!(matches!(
            verify(&auth, &HeaderMap::new(), body, 0),
            Verdict::Denied(_)
        ));
    }

    #[test]
    fn standard_webhooks_check_signature_and_time() {
        let key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let auth = WebhookAuth::standard("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = b"{\"test\": 2432232314}";
        let mut h = HeaderMap::new();
        h.insert(
            "webhook-id",
            HeaderValue::from_static("msg_p5jXN8AQM9LWM0D4loKWxJek"),
        );
        h.insert("webhook-timestamp", HeaderValue::from_static("1614265330"));
        // The Standard Webhooks specification's own test vector.
        h.insert(
            "webhook-signature",
            HeaderValue::from_static("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
        );
        assert_eq!(
            verify(&auth, &h, body, 1614265330),
            Verdict::OkWithId("msg_p5jXN8AQM9LWM0D4loKWxJek".into())
        );
        assert!(matches!(
            verify(&auth, &h, body, 1614265330 + 301),
            Verdict::Denied(_)
        ));
        assert_eq!(
            sign_standard(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_validly_signed_timestamp_at_the_far_past_is_refused() {
        // `now - ts` overflowed for ts = now - 2^63 (`abs()` wrapped to a negative number).
        let key = b"k".to_vec();
        let auth = WebhookAuth::standard("k");
        let now = 1_700_000_000i64;
        for ts in [
            i64::MIN,
            now.wrapping_sub(i64::MAX),
            i64::MAX,
            now - 301,
            now + 301,
        ] {
            let body = b"{}";
            let mut h = HeaderMap::new();
            h.insert("webhook-id", HeaderValue::from_static("msg_1"));
            h.insert(
                "webhook-timestamp",
                HeaderValue::from_str(&ts.to_string()).unwrap(),
            );
            h.insert(
                "webhook-signature",
                HeaderValue::from_str(&sign_standard(&key, "msg_1", ts, body)).unwrap(),
            );
            assert!(
                matches!(verify(&auth, &h, body, now), Verdict::Denied(_)),
                "timestamp {ts} accepted"
            );
        }
    }

    #[test]
    fn headers_alone_refuse_what_they_can() {
        let hmac = WebhookAuth::hmac(b"s", "x-signature");
        assert!(precheck(&hmac, &HeaderMap::new()).is_some());
        let bearer = WebhookAuth::Bearer {
            token: b"t0ken".to_vec(),
        };
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer nope"));
        assert!(precheck(&bearer, &h).is_some());
        h.insert("authorization", HeaderValue::from_static("Bearer t0ken"));
        assert!(precheck(&bearer, &h).is_none());
    }

    #[test]
    fn bearer() {
        let auth = WebhookAuth::Bearer {
            token: b"tok-1".to_vec(),
        };
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer tok-1"));
        assert_eq!(verify(&auth, &h, b"", 0), Verdict::Ok);
        h.insert("authorization", HeaderValue::from_static("Bearer tok-2"));
        assert!(matches!(verify(&auth, &h, b"", 0), Verdict::Denied(_)));
    }
}
