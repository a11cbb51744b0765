"""A small python-only spec shared by the fast tests: builds without converting anything."""

# A python-backend model: the build compiles it and looks for the class, never runs it.
MODEL_PY = "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n"

VALID = """\
repository: out
models:
  - name: pre
    source: {framework: python, path: pre.py}
    max_batch_size: 8
    inputs: [{name: TEXT, dtype: STRING, dims: [1]}]
    outputs: [{name: VEC, dtype: FP32, dims: [4]}]
  - name: post
    source: {framework: python, path: pre.py}
    max_batch_size: 8
    inputs: [{name: X, dtype: FP32, dims: [4]}]
    outputs: [{name: Y, dtype: INT64, dims: [1]}]
ensembles:
  - name: pipe
    max_batch_size: 8
    inputs: [{name: TEXT, dtype: STRING, dims: [1]}]
    outputs: [{name: Y, dtype: INT64, dims: [1]}]
    steps:
      - {model: pre, input_map: {TEXT: TEXT}, output_map: {VEC: vec}}
      - {model: post, input_map: {X: vec}, output_map: {Y: Y}}
"""
