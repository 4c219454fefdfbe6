"""Teachers: independent implementations of AR image models that load official checkpoints.

Every family (``llamagen``, ``var``) satisfies :class:`teachers.protocol.Teacher`, the one
interface Distilled Decoding needs from an AR image model.
"""

from teachers.protocol import SamplingConfig, Teacher, TeacherSession, TokenGeometry

__all__ = ["SamplingConfig", "Teacher", "TeacherSession", "TokenGeometry"]
