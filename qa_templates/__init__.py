"""Spatial QA generation (VSI-Bench, VSTI-Bench) from scene graphs, and the benchmarks' scorer.

- ``tasks``: the registry; one module per task family (``vsi_objects``, ``vsi_relations``, ``vsti_camera``,
  ``route_planning``), each a pure ``generate(graph, rng, cfg, rejected) -> list[Candidate]``;
- ``scene_view``: the validated numpy view of a graph shared by a scene's tasks; ``geometry``: QA-only geometry;
- ``options``: numeric distractors and answer-letter balancing; ``records``: benchmark records, prompts, LLaVA JSON;
- ``seeding``: per-(scene, task) seeds from stable hashes; ``generate``: one scene's records (the qa stage's core);
- ``scorer``: the benchmarks' exact scoring rules.
"""
