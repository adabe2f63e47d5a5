"""llm-attr from Python: a typed client of the llm-attr service and a Captum-shaped layer.

    import llm_attr
    with llm_attr.serve(model="models/SmolLM2-135M-Instruct.Q4_1.gguf") as client:
        result = client.attribute(template="{name} applied.", values={"name": "Georg"},
                                  baselines={"name": "John"}, target=" They hired him.")
        result.seq_attr, result.token_attr, result.to_pandas()

`llm_attr.captum` holds the Captum-shaped classes (LLMAttribution, ShapleyValueSampling, ...).
"""

from ._errors import APIError, ConnectError, JobError, LLMAttrError, RequestError, ServerError
from ._requests import AttributeRequest, AuditRequest
from .client import AsyncClient, AsyncJob, Client, Job, Model, Tokenizer
from .results import Attribution, Audit, Plan, Template
from .serve import Server, serve

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncJob",
    "AttributeRequest",
    "Attribution",
    "Audit",
    "AuditRequest",
    "Client",
    "ConnectError",
    "Job",
    "JobError",
    "LLMAttrError",
    "Model",
    "Plan",
    "RequestError",
    "Server",
    "ServerError",
    "Template",
    "Tokenizer",
    "serve",
]
