/*
 * The app's release of one activation on the integer grid of dpact_tf/grid.py, in Kotlin for Android.
 *
 * Why: the float32 Gaussian noise of a head can be tested exactly by a server holding the model, so the app
 * releases integers instead (grid.py's module docstring): for each coordinate f of the clean activation,
 *     n = clamp(floor(max(f, 0) * s + u), 0, D) + Z,
 * with s = 1/g the grid scale (grid steps per activation unit, a float32 value), D the largest level,
 * u = (j + 1/2) / 256 the dither and Z the discrete Gaussian noise of
 * grid.noise_table's thresholds.  u and Z come from ONE uniform 64-bit word per coordinate from the app's
 * cryptographic generator (entropyWords): its sign bit is Z's sign, bits 8..62 of v = (w < 0 ? -(w + 1) : w)
 * decide |Z| = #{thresholds <= v >> 8}, bits 0..7 are j.
 *
 * This file is the app's code and it is tested code: tests/test_kotlin_release.py compiles it with kotlinc, runs
 * main() on the JVM and checks every level and every noise value equal to grid.release / grid.sample on the same
 * words, and that entropyWords is uniform.  The float arithmetic is float32 in grid.release's order (multiply by the
 * scale, then add the dither), so the levels are bit-identical.
 *
 * Command line (what the test drives; little-endian binary files):
 *     release IN OUT    IN : int32 T, int64[T] thresholds, float32 scale, int32 maxLevel,
 *                            int32 n, float32[n] clean, int32 m, int64[m] words
 *                       OUT: int32[m] noise Z (sample), int32[n] released levels (release)
 *     entropy N OUT     OUT: int64[N] words from entropyWords(N, SecureRandom())
 * An invalid input prints "error: <message>" to stderr and exits with status 2.
 */
package dpact

import java.io.File
import java.nio.BufferUnderflowException
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.SecureRandom
import kotlin.math.floor
import kotlin.math.max
import kotlin.math.min
import kotlin.system.exitProcess

object DpactRelease {
    /** Uniform bits that decide the noise's magnitude (bits 8..62 of v). */
    const val MAGNITUDE_BITS = 55
    /** The dither takes v's low 8 bits: u = (j + 1/2) / 256. */
    const val DITHER_LEVELS = 256

    /** A word split as grid.split_words splits it: the sign, 55 magnitude bits and the dither index. */
    class Parts(val negative: BooleanArray, val magnitudeBits: LongArray, val dither: IntArray)

    /** The app's entropy: [n] uniform 64-bit words from [rng], one per activation coordinate, fresh per call. */
    fun entropyWords(n: Int, rng: SecureRandom): LongArray {
        require(n in 0..Int.MAX_VALUE / 8) {
            "n must be in [0, ${Int.MAX_VALUE / 8}] words (got $n); release a large activation in strips"
        }
        val bytes = ByteArray(8 * n)
        rng.nextBytes(bytes)
        val words = LongArray(n)
        ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asLongBuffer().get(words)
        return words
    }

    /** (negative, v >> 8, v and 0xFF) with v = w for w >= 0 and -(w + 1) for w < 0: grid.split_words. */
    fun splitWords(words: LongArray): Parts {
        val negative = BooleanArray(words.size)
        val magnitudeBits = LongArray(words.size)
        val dither = IntArray(words.size)
        for (i in words.indices) {
            val w = words[i]
            val v = if (w < 0) -(w + 1) else w  // in [0, 2^63): no overflow, even for w = Long.MIN_VALUE
            negative[i] = w < 0
            magnitudeBits[i] = v ushr 8
            dither[i] = (v and 0xFF).toInt()
        }
        return Parts(negative, magnitudeBits, dither)
    }

    /** Refuses a table that is not grid.noise_table's kind: non-empty, non-decreasing, each in [0, 2^55). */
    fun checkThresholds(thresholds: LongArray) {
        require(thresholds.isNotEmpty()) {
            "thresholds must not be empty (an empty table is no noise); pass grid.noise_table(K).thresholds"
        }
        for (m in thresholds.indices) {
            require(thresholds[m] in 0 until (1L shl MAGNITUDE_BITS)) {
                "thresholds must lie in [0, 2^$MAGNITUDE_BITS) (thresholds[$m] = ${thresholds[m]}); " +
                    "pass grid.noise_table(K).thresholds"
            }
            require(m == 0 || thresholds[m] >= thresholds[m - 1]) {
                "thresholds must not decrease (thresholds[${m - 1}] = ${thresholds[m - 1]} > " +
                    "thresholds[$m] = ${thresholds[m]}); pass grid.noise_table(K).thresholds"
            }
        }
    }

    /** |Z| = the number of thresholds <= bits (binary search; numpy's searchsorted(side="right")). */
    private fun magnitude(bits: Long, thresholds: LongArray): Int {
        var lo = 0
        var hi = thresholds.size
        while (lo < hi) {  // invariant: thresholds[< lo] <= bits < thresholds[>= hi]
            val mid = (lo + hi) ushr 1
            if (thresholds[mid] <= bits) lo = mid + 1 else hi = mid
        }
        return lo
    }

    /** The noise Z of each word: grid.sample. */
    fun sample(words: LongArray, thresholds: LongArray): IntArray {
        checkThresholds(thresholds)
        return noise(splitWords(words), thresholds)
    }

    private fun noise(parts: Parts, thresholds: LongArray) = IntArray(parts.negative.size) { i ->
        val m = magnitude(parts.magnitudeBits[i], thresholds)
        if (parts.negative[i]) -m else m
    }

    /** The released levels n = clamp(floor(max(f, 0) * scale + u), 0, maxLevel) + Z: grid.release, in float32. */
    fun release(clean: FloatArray, words: LongArray, scale: Float, maxLevel: Int, thresholds: LongArray): IntArray {
        require(words.size == clean.size) {
            "words must have one word per activation coordinate (${clean.size}; got ${words.size})"
        }
        require(scale > 0f && scale.isFinite()) {
            "scale must be > 0 and finite (got $scale); pass grid.grid_spec(...).scale"
        }
        require(maxLevel in 1..Int.MAX_VALUE - thresholds.size) {
            "maxLevel must be in [1, ${Int.MAX_VALUE - thresholds.size}] (got $maxLevel); " +
                "pass grid.grid_spec(...).max_level"
        }
        for (i in clean.indices) {
            require(clean[i].isFinite()) { "clean[$i] = ${clean[i]} is not finite; nothing was released" }
        }
        checkThresholds(thresholds)
        val parts = splitWords(words)
        val noise = noise(parts, thresholds)
        return IntArray(clean.size) { i ->
            val u = (parts.dither[i].toFloat() + 0.5f) / DITHER_LEVELS.toFloat()
            val x = max(clean[i], 0f) * scale + u
            // floor(x) >= 0 since x >= u > 0; toInt() saturates, so a huge f still ends at maxLevel
            floor(x).toInt().coerceIn(0, maxLevel) + noise[i]
        }
    }
}

/** An int32 count of [what], checked against the bytes left for its items of [itemBytes] bytes each. */
private fun count(input: ByteBuffer, itemBytes: Int, what: String): Int {
    val n = input.int
    require(n >= 0 && n.toLong() * itemBytes <= input.remaining()) {
        "the input announces $n $what but has ${input.remaining()} bytes left; see the format in DpactRelease.kt"
    }
    return n
}

private fun readRelease(input: ByteBuffer, output: File) {
    val thresholds = LongArray(count(input, 8, "thresholds")) { input.long }
    val scale = input.float
    val maxLevel = input.int
    val clean = FloatArray(count(input, 4, "activations")) { input.float }
    val words = LongArray(count(input, 8, "words")) { input.long }
    require(!input.hasRemaining()) {
        "the input has ${input.remaining()} bytes after the words; see the format in DpactRelease.kt"
    }
    val noise = DpactRelease.sample(words, thresholds)
    val levels = DpactRelease.release(clean, words, scale, maxLevel, thresholds)
    val out = ByteBuffer.allocate(4 * (noise.size + levels.size)).order(ByteOrder.LITTLE_ENDIAN)
    out.asIntBuffer().put(noise).put(levels)
    output.writeBytes(out.array())
}

private fun writeEntropy(n: Int, output: File) {
    val words = DpactRelease.entropyWords(n, SecureRandom())
    val out = ByteBuffer.allocate(8 * words.size).order(ByteOrder.LITTLE_ENDIAN)
    out.asLongBuffer().put(words)
    output.writeBytes(out.array())
}

fun main(args: Array<String>) {
    try {
        when {
            args.size == 3 && args[0] == "release" ->
                readRelease(ByteBuffer.wrap(File(args[1]).readBytes()).order(ByteOrder.LITTLE_ENDIAN), File(args[2]))
            args.size == 3 && args[0] == "entropy" -> {
                val n = args[1].toIntOrNull() ?: throw IllegalArgumentException("N must be an integer (got ${args[1]})")
                writeEntropy(n, File(args[2]))
            }
            else -> throw IllegalArgumentException("usage: release IN OUT | entropy N OUT")
        }
    } catch (e: IllegalArgumentException) {
        System.err.println("error: ${e.message}")
        exitProcess(2)
    } catch (e: BufferUnderflowException) {
        System.err.println("error: the input ends early; see the format in DpactRelease.kt")
        exitProcess(2)
    }
}
