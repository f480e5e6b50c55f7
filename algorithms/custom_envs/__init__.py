"""Environments of this project that Gymnasium does not ship, reached from a dataset file's `env_id`
attribute in gymnasium's "module:EnvId" form (e.g. "custom_envs.industrial_benchmark:IndustrialBenchmark-v0"):
gym.make imports the module, which registers the id. The folder sits next to the scripts, so
`python algorithms/<script>.py` finds it on its own; a script copied elsewhere needs this folder beside it
or on PYTHONPATH.
"""
