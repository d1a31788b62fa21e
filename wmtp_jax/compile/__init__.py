"""Ahead-of-time compilation of a pipeline's steps for accelerator topologies on a CPU host:
`python -m wmtp_jax.compile --config=configs/<pipeline>.py[:variant] --topology=v5e:2x2`.

topology.py: names and the chip table; task.py: the pipeline's train task on abstract models;
aot.py: lowering and compiling the train step and the decoding path; hlo.py: FLOPs, collectives
and HBM traffic of the optimized HLO; roofline.py: memory, roofline and MFU per device.
"""
