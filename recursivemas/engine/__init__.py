"""The backbone engine: pure torch over transformers, no Ray (the cluster wraps it in an actor)."""

from recursivemas.engine.backbone import BackboneEngine, ContextLengthError, Generation, Rollout, TeacherForced
from recursivemas.engine.inputs import Framing, Prompt, Segment

__all__ = ["BackboneEngine", "ContextLengthError", "Framing", "Generation", "Prompt", "Rollout", "Segment",
           "TeacherForced"]
