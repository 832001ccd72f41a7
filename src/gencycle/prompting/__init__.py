"""Prompt engineering: templates, zero/one/few-shot builders, chat templates."""

from gencycle.prompting.icl import FewShotBuilder, Prompt, render_chat
from gencycle.prompting.templates import TEXTS, MissingFieldError, PromptTemplate, UnknownTemplateError, template

__all__ = ["FewShotBuilder", "Prompt", "render_chat", "TEXTS", "MissingFieldError", "PromptTemplate",
           "UnknownTemplateError", "template"]
