//! The OpenAPI document, generated from the handlers' annotations. `openapi/openapi.json` in
//! the repository is this document; `llm-attr openapi > openapi/openapi.json` regenerates it.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audits, handlers, job_routes, store, templates};
use crate::audit::{AuditCell, AuditRequest, AuditResult, AuditStats, Contexts, SummaryRow};
use crate::error::{ErrorBody, ErrorDetail};
use crate::model::{ArchInfo, ModelInfo};
use crate::request::*;
use crate::run::{Plan, Progress};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "llm-attr",
        description = "Captum-style attribution for language models (feature ablation, Shapley values, \
            Shapley value sampling, LIME, Kernel SHAP) over prompt-template placeholders or tokens. \
            Every /v1 route takes an optional API key (`Authorization: Bearer KEY` or `X-Api-Key: KEY`) \
            when the server is started with one. Errors are `{\"error\": {\"code\", \"message\", \"field\"?}}`."
    ),
    paths(
        handlers::attributions,
        job_routes::create,
        job_routes::get,
        job_routes::cancel,
        job_routes::events,
        audits::create,
        audits::get,
        audits::cancel,
        audits::events,
        audits::plan,
        handlers::templates,
        handlers::tokenize,
        handlers::generate,
        handlers::model,
        handlers::health,
        handlers::ready,
        handlers::metrics,
    ),
    components(schemas(
        AttributeRequest, AttributeResponse, Baseline, TokenRef, Method, AttrTarget, BaselineSampling,
        Feature, SegmentRef, SplitKind, Level, Stats, Warning, WarningCode, ErrorBody, ErrorDetail, Progress, store::Job, store::JobState, store::JobKind,
        store::JobResult, AuditRequest, AuditResult, AuditCell, SummaryRow, AuditStats, Contexts,
        audits::PlanRequest, Plan, templates::Template,
        templates::Templates, handlers::TokenizeRequest, handlers::TokenizeResponse,
        handlers::GenerateRequest, handlers::GenerateResponse, handlers::Health, ModelInfo, ArchInfo,
    )),
    modifiers(&Security),
    tags(
        (name = "attribution", description = "Run attributions"),
        (name = "jobs", description = "Attributions in the background, with progress"),
        (name = "audits", description = "Grids of values scored for several targets, averaged over contexts"),
        (name = "model", description = "The loaded model"),
        (name = "ops", description = "Health, readiness, metrics"),
    )
)]
pub(crate) struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
        );
    }
}

pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as pretty JSON with a trailing newline, as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let mut s = openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
