"""The backbone engine: pure torch over transformers, no Ray (the cluster wraps it in an actor)."""

from recursivemas.engine.backbone import BackboneEngine, ContextLengthError, Generation, Rollout, TeacherForced
from recursivemas.engine.inputs import Framing, Prompt, Segment
from recursivemas.engine.sampling import FinishReason, Sampling

__all__ = ["BackboneEngine", "ContextLengthError", "FinishReason", "Framing", "Generation", "Prompt", "Rollout",
           "Sampling", "Segment", "TeacherForced"]
