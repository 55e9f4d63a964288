"""The backbone engine: pure torch over transformers, no Ray (the cluster wraps it in an actor)."""

from recursivemas.engine.backbone import BackboneEngine, ContextLengthError, Generation, Rollout, TeacherForced
from recursivemas.engine.inputs import Prompt, Segment

__all__ = ["BackboneEngine", "ContextLengthError", "Generation", "Prompt", "Rollout", "Segment", "TeacherForced"]
