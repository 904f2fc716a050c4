"""SPNN-style first layer on additive secret shares (Fang et al., "SPNN: Splitting Private Neural Networks", 2020).

Two data holders each hold part of every face: holder A the left columns ``[:, :, :column]``, holder B the right
columns ``[:, :, column:]``.  ``conv1_1`` (3x3, SAME padding, stride 1, pre-activation plus bias) is computed on
additive shares over the ring Z_2^64, so neither holder sees the other's pixels and the server sees neither's.
The server receives conv1_1's output ``z = conv(x, K) + b`` only -- as two shares it adds -- trains the rest of the
network, and returns dL/dz to both holders, who update their shares of ``K`` and ``b`` with SGD momentum.

One step, with the messages :class:`Transcript` records (``M = N*H*W`` output pixels, ``C`` channels):

* offline -- a trusted dealer sends each holder its share of a Beaver triple ``U [M, 27], V [27, C], W = U V`` and
  of a truncation mask (below); at set-up, each holder's share of the initial weights.
* forward round 1 -- input sharing: A sends B a uniformly random share of its pixels, B sends A one of its own.
  Each holder now has a share ``X_i`` of the whole image and, locally, ``P_i = im2col(X_i)`` (zero padding is
  linear).
* forward round 2 -- Beaver's multiplication: each holder opens ``E_i = P_i - U_i`` and ``F_i = K_i - V_i`` to the
  other; with ``E = P - U``, ``F = K - V`` public to both, ``Z_0 = E (F + V_0) + U_0 F + W_0 + b_0``,
  ``Z_1 = E V_1 + U_1 F + W_1 + b_1`` and ``Z_0 + Z_1 = P K + b``.
* forward round 3 -- each holder sends its ``Z_i`` to the server, which adds them: ``z``.  No truncation is
  needed here: ``z`` is decoded at scale ``2^(2f)``.  (Requires ``|z| < 2^(63 - 2f)``: 2^23 at f = 20.)
* backward round 4 -- the server sends dL/dz (float32) to both holders.  The bias gradient ``sum dL/dz`` is then
  public to both, so the bias velocity is too (A adds it to its share).  The kernel gradient ``P^T dL/dz`` is
  linear in the shares: each holder computes ``Y_i = mu * v_i - P_i^T (lr * dL/dz)`` locally (scale f + g).
* backward round 5 -- dealer-assisted truncation of ``Y`` by ``g`` bits back to scale ``f``: the dealer shares a
  uniform mask ``r``, ``r >> g`` and the top bit of ``r``; the holders open ``c = Y + 2^62 + r`` (uniform on the
  ring, so it reveals nothing); then ``Y >> g = c >> g - r >> g + w 2^(64-g) - 2^(62-g)`` with the wrap bit
  ``w = topbit(r) (1 - topbit(c))``, linear in the dealer's shares.  Exact up to stochastic rounding (the result is
  floor or ceil of ``Y / 2^g``, unbiased), with **no failure probability** provided ``|Y| < 2^62`` at scale
  ``f + g`` (2^10 in float units at f = 20, g = 32: the velocity of a weight).  SecureML's local truncation
  (Mohassel & Zhang 2017) would need no dealer and no round, but fails with probability about
  ``|Y| / 2^63`` per element -- 2^-21 per weight per step for a velocity of 1e-3 at these scales, too often over
  a training run -- and a failure throws the weight off by 2^(64-g).

The kernel stays shared through training: its update ``P^T dL/dz`` mixes both halves' pixels, so opening it would
tell each holder about the other's.  The bias update depends on dL/dz alone, which both already hold.

Security assumptions (the simulation in one process holds each party's values apart; it does not enforce them):
semi-honest parties; the dealer is trusted and colludes with nobody (it is the assumption that stands in for an
offline phase of oblivious transfer or homomorphic encryption); the server does not collude with either holder;
the holders' own randomness comes from ``numpy.random.Generator`` (PCG64: a statistical, not a cryptographic,
generator -- a deployment would use a CSPRNG).  What the protocol reveals by design: the server learns ``z`` (the
clean pre-activation of conv1_1: nothing is noised, unlike the DP activation; the server never sees the kernel,
but ``z`` is a noise-free linear image of the whole face), and both holders learn dL/dz, which depends on both
halves of each face.  Everything else a holder receives is uniform on the ring
(:meth:`SharedConv1.view`).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = ["RING_BITS", "FRAC_BITS", "GRAD_FRAC_BITS", "PARTIES", "encode", "decode", "share", "reconstruct",
           "im2col3x3", "split_columns", "Message", "Transcript", "TrustedDealer", "truncate", "SharedConv1"]

RING_BITS = 64          # the ring Z_2^64: numpy uint64 arithmetic wraps around
FRAC_BITS = 20          # fixed-point fractional bits of pixels and weights (resolution 2^-20 ~ 1e-6)
GRAD_FRAC_BITS = 32     # fractional bits of the public lr * dL/dz and momentum in the weight update
PARTIES = ("A", "B", "server", "dealer")
ELEMENT_BYTES = 8       # one ring element on the wire
FLOAT_BYTES = 4         # dL/dz travels as float32, as the DP client's activation and gradient do

_U64 = np.uint64
_TOP = RING_BITS - 1

Rng = Union[np.random.Generator, int, None]


def encode(x, frac_bits: int = FRAC_BITS) -> np.ndarray:
    """Real numbers -> ring elements: ``round(x * 2^frac_bits)`` in two's complement modulo 2^64 (uint64)."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot encode non-finite values (NaN or inf) as fixed point")
    scaled = np.rint(x * 2.0 ** frac_bits)
    if scaled.size and np.max(np.abs(scaled)) >= 2.0 ** _TOP:
        raise ValueError(f"values up to {np.max(np.abs(x)):.3g} overflow the ring at {frac_bits} fractional bits "
                         f"(|x| must be < 2^{_TOP - frac_bits})")
    return scaled.astype(np.int64).view(_U64)


def decode(v: np.ndarray, frac_bits: int = FRAC_BITS) -> np.ndarray:
    """Ring elements -> float64: the signed (two's complement) value divided by 2^frac_bits."""
    v = _ring(v, "decode's argument")
    return v.view(np.int64).astype(np.float64) / 2.0 ** frac_bits


def share(v: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Additive shares of ring elements: ``s0`` uniform on Z_2^64, ``s1 = v - s0``; each alone is uniform."""
    v = _ring(v, "share's argument")
    s0 = _uniform(rng, v.shape)
    return s0, v - s0


def reconstruct(s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """``s0 + s1`` modulo 2^64."""
    s0, s1 = _ring(s0, "s0"), _ring(s1, "s1")
    if s0.shape != s1.shape:
        raise ValueError(f"shares must have the same shape (got {s0.shape} and {s1.shape})")
    return s0 + s1


def im2col3x3(x: np.ndarray) -> np.ndarray:
    """[N, H, W, Cin] -> [N*H*W, 9*Cin]: the 3x3 SAME (zero-padded) patches, ordered (dy, dx, cin) like a Keras
    kernel ``[3, 3, Cin, C]`` reshaped to ``[9*Cin, C]``.  Linear, so it applies to shares unchanged."""
    if x.ndim != 4:
        raise ValueError(f"im2col3x3 expects [N, H, W, C] (got shape {x.shape})")
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.empty((n, h, w, 9, c), dtype=x.dtype)
    for dy in range(3):
        for dx in range(3):
            cols[:, :, :, 3 * dy + dx, :] = xp[:, dy:dy + h, dx:dx + w, :]
    return cols.reshape(n * h * w, 9 * c)


def split_columns(images, column: int) -> Tuple[np.ndarray, np.ndarray]:
    """A full batch [N, H, W, C] -> (A's columns ``[:, :, :column]``, B's ``[:, :, column:]``)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C] (got shape {images.shape})")
    w = images.shape[2]
    if int(column) != column or not 1 <= column <= w - 1:
        raise ValueError(f"column must be an integer in [1, {w - 1}] so that each holder has a column "
                         f"(got {column} for width {w})")
    return images[:, :, :int(column)], images[:, :, int(column):]


@dataclasses.dataclass(frozen=True)
class Message:
    """One message of the protocol."""

    phase: str          # "setup", "offline" (dealer), "forward" or "backward"
    round: int          # online round it belongs to (0 for dealer and set-up messages)
    sender: str         # one of PARTIES
    receiver: str       # one of PARTIES
    names: Tuple[str, ...]  # the arrays it carries
    nbytes: int         # payload size in bytes (ring elements 8 bytes, dL/dz float32 4 bytes)


class Transcript:
    """Every message sent: who sends what to whom, bytes, messages and online rounds, per image.

    With ``keep_payloads=True`` it also keeps the arrays of the messages since the last :meth:`start_step`
    (what each party saw: :meth:`SharedConv1.view`)."""

    def __init__(self, keep_payloads: bool = False) -> None:
        self.messages: List[Message] = []
        self.keep_payloads = keep_payloads
        self.images = 0         # images processed by forward passes
        self.forwards = 0       # forward passes
        self.round = 0          # online rounds so far
        self._step: List[Tuple[Message, Mapping[str, np.ndarray]]] = []

    def start_step(self) -> None:
        self._step = []

    def new_round(self) -> None:
        self.round += 1

    def record(self, sender: str, receiver: str, phase: str, payload: Mapping[str, np.ndarray],
               *, online: bool = True, element_bytes: int = ELEMENT_BYTES) -> Message:
        nbytes = sum(int(np.asarray(a).size) * element_bytes for a in payload.values())
        msg = Message(phase, self.round if online else 0, sender, receiver, tuple(payload), nbytes)
        self.messages.append(msg)
        if self.keep_payloads:
            self._step.append((msg, dict(payload)))
        return msg

    def received(self, party: str) -> Dict[str, np.ndarray]:
        """The arrays ``party`` received since the last :meth:`start_step`, keyed ``"<name> from <sender>"``."""
        if not self.keep_payloads:
            raise ValueError("payloads are kept only with keep_payloads=True")
        return {f"{name} from {m.sender}": a for m, payload in self._step if m.receiver == party
                for name, a in payload.items()}

    def select(self, *, sender: Optional[str] = None, receiver: Optional[str] = None,
               phase: Optional[str] = None) -> List[Message]:
        return [m for m in self.messages if (sender is None or m.sender == sender)
                and (receiver is None or m.receiver == receiver) and (phase is None or m.phase == phase)]

    def bytes(self, **where) -> int:
        """Total bytes of the messages matching ``sender=``, ``receiver=``, ``phase=``."""
        return sum(m.nbytes for m in self.select(**where))

    def summary(self) -> Dict[str, object]:
        """Bytes per image per link (``"A->B"``) and per phase, messages and online rounds per forward pass."""
        if not self.images:
            raise ValueError("the transcript holds no forward pass yet")
        links: Dict[str, int] = {}
        phases: Dict[str, int] = {}
        for m in self.messages:
            links[f"{m.sender}->{m.receiver}"] = links.get(f"{m.sender}->{m.receiver}", 0) + m.nbytes
            phases[m.phase] = phases.get(m.phase, 0) + m.nbytes
        return {"images": self.images,
                "bytes_per_image": {k: v / self.images for k, v in sorted(links.items())},
                "phase_bytes_per_image": {k: v / self.images for k, v in sorted(phases.items())},
                "online_bytes_per_image": (phases.get("forward", 0) + phases.get("backward", 0)) / self.images,
                "messages_per_forward": len(self.messages) / self.forwards,
                "online_rounds_per_forward": self.round / self.forwards}


class TrustedDealer:
    """The assumption that replaces an offline phase: a party trusted by all, colluding with none, that hands the
    holders correlated randomness (Beaver triples, truncation masks) and learns nothing about the data."""

    def __init__(self, rng: Rng = None, transcript: Optional[Transcript] = None) -> None:
        self.rng = np.random.default_rng(rng)
        self.transcript = transcript if transcript is not None else Transcript()
        self.bytes_sent = 0

    def _deal(self, values: Mapping[str, np.ndarray], phase: str = "offline") -> Tuple[Dict, Dict]:
        halves: Tuple[Dict, Dict] = ({}, {})
        for name, v in values.items():
            s0, s1 = share(v, self.rng)
            halves[0][name], halves[1][name] = s0, s1
        for holder, half in zip(("A", "B"), halves):
            self.bytes_sent += self.transcript.record("dealer", holder, phase, half, online=False).nbytes
        return halves

    def matmul_triple(self, m: int, k: int, c: int) -> Tuple[Dict, Dict]:
        """Shares of ``U [m, k]``, ``V [k, c]`` uniform and ``W = U V``: (A's {"U", "V", "W"}, B's)."""
        u, v = _uniform(self.rng, (m, k)), _uniform(self.rng, (k, c))
        return self._deal({"U": u, "V": v, "W": _matmul(u, v)})

    def truncation_mask(self, shape: Tuple[int, ...], bits: int) -> Tuple[Dict, Dict]:
        """Shares of a uniform ``r``, of ``r >> bits`` and of r's top bit: (A's {"r", "r_hi", "r_top"}, B's)."""
        r = _uniform(self.rng, shape)
        return self._deal({"r": r, "r_hi": r >> _U64(bits), "r_top": r >> _U64(_TOP)})

    def share_weights(self, values: Mapping[str, np.ndarray]) -> Tuple[Dict, Dict]:
        """Set-up: shares of the initial (public, data-independent) weights."""
        return self._deal(values, phase="setup")


def truncate(y0: np.ndarray, y1: np.ndarray, bits: int, *, dealer: TrustedDealer,
             transcript: Transcript, phase: str = "backward") -> Tuple[np.ndarray, np.ndarray]:
    """Shares of ``Y / 2^bits`` (stochastically rounded) from shares of ``Y``, ``|Y| < 2^62``; one round in which
    the holders open ``c = Y + 2^62 + r`` (see the module docstring)."""
    if not 0 < bits < _TOP - 1:
        raise ValueError(f"bits must be in [1, {_TOP - 2}] (got {bits})")
    mask_a, mask_b = dealer.truncation_mask(y0.shape, bits)
    c0 = y0 + _U64(1 << (_TOP - 1)) + mask_a["r"]     # A (the offset 2^62 makes Y + 2^62 non-negative)
    c1 = y1 + mask_b["r"]                              # B
    transcript.new_round()
    transcript.record("A", "B", phase, {"c": c0})
    transcript.record("B", "A", phase, {"c": c1})
    c = c0 + c1
    c_hi, not_c_top = c >> _U64(bits), _U64(1) - (c >> _U64(_TOP))
    wrap_unit = _U64(1 << (RING_BITS - bits))
    t0 = c_hi - mask_a["r_hi"] + not_c_top * mask_a["r_top"] * wrap_unit - _U64(1 << (_TOP - 1 - bits))
    t1 = _U64(0) - mask_b["r_hi"] + not_c_top * mask_b["r_top"] * wrap_unit
    return t0, t1


class SharedConv1:
    """conv1_1 computed by holders A and B on secret shares; the server gets ``z = conv(x, K) + b`` only.

    Args:
      kernel: the initial kernel ``[3, 3, Cin, C]`` (e.g. ``split.client.get_layer("conv1_1").kernel``).
      bias: the initial bias ``[C]``.
      rng: a seed or Generator from which the holders' and dealer's generators are spawned, or a mapping
        ``{"A": Generator, "B": Generator, "dealer": Generator}``.
      frac_bits: fractional bits of pixels and weights; ``z`` is exact to about ``27 * 2^-frac_bits * max|x, K|``.
      grad_frac_bits: fractional bits of the public ``lr * dL/dz`` and momentum in the update.
      keep_views: keep every message's arrays of the last step for :meth:`view` (memory: several times the batch).
      dealer: the dealer to use (default: a :class:`TrustedDealer` on ``rng``'s dealer generator); the protocol
        records its messages in the dealer's transcript.
    """

    def __init__(self, kernel, bias, *, rng: Union[Rng, Mapping[str, np.random.Generator]] = None,
                 frac_bits: int = FRAC_BITS, grad_frac_bits: int = GRAD_FRAC_BITS, keep_views: bool = False,
                 dealer: Optional[TrustedDealer] = None) -> None:
        kernel, bias = np.asarray(kernel), np.asarray(bias)
        if kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
            raise ValueError(f"kernel must be [3, 3, Cin, C] (got shape {kernel.shape})")
        if bias.shape != (kernel.shape[3],):
            raise ValueError(f"bias must be [C] = [{kernel.shape[3]}] (got shape {bias.shape})")
        for name, a in (("kernel", kernel), ("bias", bias)):
            if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)):
                raise ValueError(f"{name} must be finite floats (got dtype {a.dtype})")
        if not 4 <= frac_bits <= 28:
            raise ValueError(f"frac_bits must be in [4, 28] so that z (scale 2^(2 frac_bits)) fits the ring "
                             f"(got {frac_bits})")
        if not 8 <= grad_frac_bits <= 60 - frac_bits:
            raise ValueError(f"grad_frac_bits must be in [8, {60 - frac_bits}] (got {grad_frac_bits})")
        if isinstance(rng, Mapping):
            missing = ({"A", "B"} | ({"dealer"} if dealer is None else set())) - set(rng)
            if missing:
                raise ValueError(f"rng mapping lacks generators for {sorted(missing)}")
            rngs = dict(rng)
        else:
            rngs = dict(zip(("A", "B", "dealer"), np.random.default_rng(rng).spawn(3)))
        self.frac_bits, self.grad_frac_bits, self.keep_views = int(frac_bits), int(grad_frac_bits), keep_views
        self.kernel_shape = tuple(kernel.shape)
        self.dealer = dealer if dealer is not None else TrustedDealer(rngs["dealer"])
        self.transcript = self.dealer.transcript
        self.transcript.keep_payloads = keep_views
        self._rng = rngs
        k = kernel.reshape(-1, kernel.shape[3])
        shares = self.dealer.share_weights({"K": encode(k, frac_bits), "b": encode(bias, frac_bits)})
        zeros = np.zeros_like(k, dtype=_U64)
        # Holder i's state: its shares of kernel, bias and the kernel's momentum velocity.
        self._holders = [{"K": s["K"], "b": s["b"], "vK": zeros.copy()} for s in shares]
        self._bias_velocity = np.zeros(kernel.shape[3])  # public to both holders (a sum of public gradients)
        self._pending: Optional[List[np.ndarray]] = None   # each holder's im2col share, kept for backward
        self._z_shape: Optional[Tuple[int, ...]] = None

    def _send(self, sender: str, receiver: str, phase: str, payload: Mapping[str, np.ndarray], **kw) -> None:
        self.transcript.record(sender, receiver, phase, payload, **kw)

    def forward(self, left, right) -> np.ndarray:
        """A's columns ``[N, H, wA, Cin]`` and B's ``[N, H, wB, Cin]`` -> ``z = conv1_1(x) + b`` (pre-activation,
        float32 ``[N, H, wA + wB, C]``), as the server reconstructs it."""
        x_a, x_b = self._check_halves(left, right)
        f, tr = self.frac_bits, self.transcript
        tr.start_step()
        # Round 1: each holder shares its half with the other.
        a_keep, a_send = share(encode(x_a, f), self._rng["A"])
        b_send, b_keep = share(encode(x_b, f), self._rng["B"])
        tr.new_round()
        self._send("A", "B", "forward", {"pixel share": a_send})
        self._send("B", "A", "forward", {"pixel share": b_send})
        patches = [im2col3x3(np.concatenate([a_keep, b_send], axis=2)),     # A's share of im2col(x)
                   im2col3x3(np.concatenate([a_send, b_keep], axis=2))]     # B's
        m, k = patches[0].shape
        c = self.kernel_shape[3]
        triple = self.dealer.matmul_triple(m, k, c)
        # Round 2: open E = P - U and F = K - V.
        opened = [(p - t["U"], h["K"] - t["V"]) for p, t, h in zip(patches, triple, self._holders)]
        tr.new_round()
        self._send("A", "B", "forward", {"E": opened[0][0], "F": opened[0][1]})
        self._send("B", "A", "forward", {"E": opened[1][0], "F": opened[1][1]})
        e, f_open = opened[0][0] + opened[1][0], opened[0][1] + opened[1][1]
        scale = _U64(1 << f)  # the bias (scale f) joins the product (scale 2f)
        z_shares = [_matmul(e, f_open + triple[0]["V"]) + _matmul(triple[0]["U"], f_open) + triple[0]["W"]
                    + self._holders[0]["b"] * scale,
                    _matmul(e, triple[1]["V"]) + _matmul(triple[1]["U"], f_open) + triple[1]["W"]
                    + self._holders[1]["b"] * scale]
        # Round 3: both send their share of z to the server.
        tr.new_round()
        self._send("A", "server", "forward", {"z share": z_shares[0]})
        self._send("B", "server", "forward", {"z share": z_shares[1]})
        n, h = x_a.shape[:2]
        self._z_shape = (n, h, x_a.shape[2] + x_b.shape[2], c)
        self._pending = patches
        tr.images += n
        tr.forwards += 1
        return decode(z_shares[0] + z_shares[1], 2 * f).astype(np.float32).reshape(self._z_shape)

    def backward(self, grad_z, *, learning_rate: float, momentum: float = 0.9) -> None:
        """Apply the server's dL/dz of the last forward: SGD with momentum, as Keras' SGD does
        (``v = momentum * v - lr * g``, ``w = w + v``), on the holders' shares of the kernel and bias."""
        if self._pending is None:
            raise ValueError("backward needs a forward first; each forward's gradient is applied once")
        grad_z = np.asarray(grad_z)
        if grad_z.shape != self._z_shape:
            raise ValueError(f"grad_z must have the shape of the last z, {self._z_shape} (got {grad_z.shape})")
        if not np.issubdtype(grad_z.dtype, np.floating) or not np.all(np.isfinite(grad_z)):
            raise ValueError("grad_z must be finite floats; refused, nothing changed")
        if not (np.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0 (got {learning_rate})")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) (got {momentum})")
        g = grad_z.astype(np.float64).reshape(-1, self.kernel_shape[3])
        self.transcript.new_round()
        for holder in ("A", "B"):
            self._send("server", holder, "backward", {"dL/dz": grad_z}, element_bytes=FLOAT_BYTES)
        fg = self.grad_frac_bits
        # Bias: its gradient and velocity are public to both holders; A adds the velocity to its share.
        self._bias_velocity = momentum * self._bias_velocity - learning_rate * g.sum(axis=0)
        self._holders[0]["b"] = self._holders[0]["b"] + encode(self._bias_velocity, self.frac_bits)
        # Kernel: Y_i = mu v_i - P_i^T (lr g) at scale f + fg, locally; truncated to scale f in one round.
        step, mu = encode(learning_rate * g, fg), encode(momentum, fg)
        y = [mu * h["vK"] - _matmul(p.T, step) for h, p in zip(self._holders, self._pending)]
        velocity = truncate(y[0], y[1], fg, dealer=self.dealer, transcript=self.transcript)
        for h, v in zip(self._holders, velocity):
            h["vK"], h["K"] = v, h["K"] + v
        self._pending = None

    def weights(self) -> Tuple[np.ndarray, np.ndarray]:
        """The reconstructed kernel ``[3, 3, Cin, C]`` and bias ``[C]`` (float64; for tests and evaluation)."""
        a, b = self._holders
        kernel = decode(a["K"] + b["K"], self.frac_bits).reshape(self.kernel_shape)
        return kernel, decode(a["b"] + b["b"], self.frac_bits)

    def view(self, party: str) -> Dict[str, np.ndarray]:
        """Every array ``party`` received in the last step (needs ``keep_views=True``): the server's two z shares;
        a holder's pixel share, E, F, dealer shares and truncation openings (uniform on the ring) and dL/dz."""
        if party not in PARTIES:
            raise ValueError(f"party must be one of {PARTIES} (got {party!r})")
        if not self.keep_views:
            raise ValueError("views are kept only with SharedConv1(..., keep_views=True)")
        return self.transcript.received(party)

    def _check_halves(self, left, right) -> Tuple[np.ndarray, np.ndarray]:
        halves = []
        for name, x in (("left (holder A's columns)", left), ("right (holder B's columns)", right)):
            x = np.asarray(x)
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"{name} must be floating-point pixels (got dtype {x.dtype}); scale 0..255 "
                                 f"integers to floats first")
            if x.ndim != 4 or x.shape[3] != self.kernel_shape[2] or min(x.shape) < 1:
                raise ValueError(f"{name} must be [N, H, w, {self.kernel_shape[2]}] with N, H, w >= 1 "
                                 f"(got shape {x.shape})")
            if not np.all(np.isfinite(x)):
                raise ValueError(f"{name} holds non-finite pixels")
            halves.append(x)
        if halves[0].shape[:2] != halves[1].shape[:2]:
            raise ValueError(f"the two halves must share N and H (got {halves[0].shape} and {halves[1].shape})")
        return halves[0], halves[1]


def _ring(v, name: str) -> np.ndarray:
    v = np.asarray(v)
    if v.dtype != _U64:
        raise ValueError(f"{name} must be ring elements (uint64, from encode), got dtype {v.dtype}")
    return v


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix product modulo 2^64.  einsum: numpy's integer ``@`` has no BLAS, and on a transposed view (the
    kernel gradient ``P^T g``) it is ~30x slower than this contraction."""
    return np.einsum("mk,kc->mc", a, b)


def _uniform(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, np.iinfo(_U64).max, size=shape, dtype=_U64, endpoint=True)
