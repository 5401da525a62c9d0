"""How an answer says it came from the LLM simulator.

The simulator puts this in `system_fingerprint`; the client marks results carrying it as
simulated, so nothing downstream mistakes them for a real model's output.
"""

SIMULATOR_FINGERPRINT = "synthstream-simulator"
