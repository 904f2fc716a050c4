"""The alternatives to DP activations the baselines chapter compares, trained by the same loop
(:class:`dpact_tf.training.EpochTrainer`) on the same network (:func:`dpact_tf.vggface.build_split_vggface`).

* :mod:`dpact_tf.baselines.dpsgd` -- DP-SGD (Abadi et al. 2016) on the whole network, by the data holder, with
  TF Privacy's per-example clipping and noise (its Keras ``DPModel``, or its ``DPKerasSGDOptimizer``); noise
  calibrated to a per-example epsilon with dp-accounting's RDP accountant.
* :mod:`dpact_tf.baselines.poisson` -- Poisson-sampled batches, the sampling DP-SGD's accountant assumes (each
  example in each step with probability B / n), for :class:`~dpact_tf.baselines.dpsgd.DPSGDTrainer`.
* :mod:`dpact_tf.baselines.dssgd` -- DSSGD (Shokri & Shmatikov 2015): K participants, local SGD, top-theta
  gradient upload to a parameter server.
* :mod:`dpact_tf.baselines.secret_sharing` -- SPNN-style (Fang et al. 2020): conv1_1 on additive secret shares
  (Z_2^64 fixed point, a trusted dealer's Beaver triples) of two data holders' column halves of each face; the
  server receives conv1_1's output only (pre-activation, noise-free) and returns dL/dz; pure NumPy.
* :mod:`dpact_tf.baselines.linear_dpsgd` -- DP-SGD on a softmax layer over a public model's features (Tramer &
  Boneh 2021): exact per-example clipping in closed form, Poisson sampling as accounted; pure NumPy.
* :mod:`dpact_tf.baselines.feature_release` -- a feature vector clipped and released once per image with Gaussian
  noise for a per-image epsilon (replace-one), and labels by randomized response with a prior (Ghazi et al. 2021).
* PrivyNet-style (Li et al.) needs no module of its own: a :class:`dpact_tf.split.SplitTrainer` whose client is
  the public model's first layers, frozen (``TrainingConfig(train_client=False)``), without noise.
"""
