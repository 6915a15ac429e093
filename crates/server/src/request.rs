//! The `/v1/tag` wire format: validating requests field by field (so a 422
//! names the field at fault) and shaping responses.

use casetag_core::Transcript;
use casetag_engine::Tagged;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::models::ModelInfo;
use crate::Limits;

/// Default and largest `top_k` (alternatives per case).
pub const DEFAULT_TOP_K: usize = 3;
pub const MAX_TOP_K: usize = 50;

/// A validated tag request.
#[derive(Debug)]
pub struct TagRequest {
    pub ids: Vec<Option<String>>,
    /// The cases as sent: the engine prepares their text with the model's
    /// recorded pipeline (normalise, mask, cap), as for `tag` and `eval`.
    pub cases: Vec<Transcript>,
    pub top_k: usize,
}

/// Validate a parsed JSON body against the limits.
pub fn parse_tag_request(body: &Value, limits: &Limits) -> Result<TagRequest, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object with a `cases` array"))?;
    let cases = match obj.get("cases") {
        None | Some(Value::Null) => return Err(ApiError::invalid("cases", "is required")),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::invalid("cases", "must be an array")),
    };
    if cases.is_empty() {
        return Err(ApiError::invalid("cases", "must not be empty"));
    }
    if cases.len() > limits.max_cases {
        return Err(ApiError::invalid(
            "cases",
            format!(
                "{} cases is more than the limit of {} per request; split the request",
                cases.len(),
                limits.max_cases
            ),
        ));
    }
    let top_k = match obj.get("top_k") {
        None | Some(Value::Null) => DEFAULT_TOP_K,
        Some(v) => match v.as_u64() {
            Some(k) if k as usize <= MAX_TOP_K => k as usize,
            _ => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("must be an integer from 0 to {MAX_TOP_K}"),
                ))
            }
        },
    };
    let mut out = TagRequest {
        ids: Vec::with_capacity(cases.len()),
        cases: Vec::with_capacity(cases.len()),
        top_k,
    };
    for (i, c) in cases.iter().enumerate() {
        let c = c
            .as_object()
            .ok_or_else(|| ApiError::invalid(&format!("cases[{i}]"), "must be an object"))?;
        let id = match c.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::invalid(
                    &format!("cases[{i}].id"),
                    "must be a string",
                ))
            }
        };
        let text = match c.get("text") {
            None | Some(Value::Null) => {
                return Err(ApiError::invalid(
                    &format!("cases[{i}].text"),
                    "is required",
                ))
            }
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(ApiError::invalid(
                    &format!("cases[{i}].text"),
                    "must be a string",
                ))
            }
        };
        if text.trim().is_empty() {
            return Err(ApiError::invalid(
                &format!("cases[{i}].text"),
                "must not be empty",
            ));
        }
        out.cases.push(Transcript {
            id: id.clone(),
            text: text.clone(),
        });
        out.ids.push(id);
    }
    Ok(out)
}

/// One result of `POST /v1/tag`: the engine's record of a tagged case,
/// the same one `casetag tag` writes as columns.
pub use casetag_engine::record::Record as TagResult;

#[derive(Debug, Serialize)]
pub struct TagResponse {
    pub model: ModelInfo,
    pub results: Vec<TagResult>,
}

pub fn to_result(id: Option<String>, t: Tagged) -> TagResult {
    TagResult::new(id, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_field() {
        let l = Limits::default();
        let msg = |v: Value| parse_tag_request(&v, &l).unwrap_err().message;
        assert!(msg(json!([])).starts_with("body:"));
        assert!(msg(json!({})).starts_with("cases: is required"));
        assert!(msg(json!({"cases": []})).starts_with("cases: must not be empty"));
        assert!(msg(json!({"cases": [{"text": 5}]})).starts_with("cases[0].text: must be a string"));
        assert!(msg(json!({"cases": [{"text": "ok"}, {"text": "  "}]}))
            .starts_with("cases[1].text: must not be empty"));
        assert!(msg(json!({"cases": [{"id": 3, "text": "x"}]})).starts_with("cases[0].id"));
        assert!(msg(json!({"cases": [{"text": "x"}], "top_k": 51})).starts_with("top_k"));
        assert!(msg(json!({"cases": [{"text": "x"}], "top_k": -1})).starts_with("top_k"));
        let many: Vec<Value> = (0..65).map(|_| json!({"text": "x"})).collect();
        assert!(msg(json!({ "cases": many })).contains("limit of 64"));
        let ok = parse_tag_request(&json!({"cases": [{"id": "c1", "text": "hi"}]}), &l).unwrap();
        assert_eq!(ok.top_k, DEFAULT_TOP_K);
        assert_eq!(ok.ids, vec![Some("c1".to_string())]);
    }
}
