import CatenaCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The speed of the bare disk: sequential POSIX `write()`s of a fixed volume to a new file,
/// in fixed-size pieces, with `fsync`s. The yardstick for the store's append throughput.
public struct RawDiskBenchmark: Sendable {
    /// Where the scratch file is created (removed afterwards).
    public var directory: String
    /// Bytes to write in total.
    public var totalBytes: Int
    /// Bytes per `write()` call. Default 1 MiB.
    public var pieceSize: Int = 1 << 20
    /// `fsync` after every this many bytes (and at the end); nil: only at the end.
    public var syncEvery: Int?

    /// Creates a run description.
    public init(directory: String, totalBytes: Int, pieceSize: Int = 1 << 20, syncEvery: Int? = nil) {
        self.directory = directory
        self.totalBytes = totalBytes
        self.pieceSize = pieceSize
        self.syncEvery = syncEvery
    }

    /// What one run measured.
    public struct Result: Hashable, Sendable {
        /// Bytes written.
        public var bytes: Int
        /// From `open` to the end of the last `fsync`.
        public var elapsed: Duration
        /// `fsync` calls.
        public var syncs: Int
        /// Decimal megabytes (10^6 bytes) per second.
        public var megabytesPerSecond: Double { Double(bytes) / 1e6 / elapsed.seconds }
    }

    /// Writes the file, syncs it, removes it. Blocks the calling thread.
    public func run() throws(CatenaError) -> Result {
        precondition(pieceSize > 0 && totalBytes >= 0)
        var buffer = [UInt8](repeating: 0, count: pieceSize)
        var rng = SplitMix64(seed: 0x5EED_0F_D15C)
        rng.fill(&buffer)
        let path = directory + "/raw-\(getpid())-\(syncEvery ?? 0).dat"
        let clock = ContinuousClock()
        let start = clock.now
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ScratchSpace.posix(errno, "open", path) }
        defer {
            close(fd)
            unlink(path)
        }
        var written = 0
        var sinceSync = 0
        var syncs = 0
        while written < totalBytes {
            let n = min(pieceSize, totalBytes - written)
            var done = 0
            while done < n {
                let r = buffer.withUnsafeBytes { write(fd, $0.baseAddress! + done, n - done) }
                if r < 0 {
                    if errno == EINTR { continue }
                    throw ScratchSpace.posix(errno, "write", path)
                }
                done += r
            }
            written += n
            sinceSync += n
            if let every = syncEvery, sinceSync >= every {
                guard fsync(fd) == 0 else { throw ScratchSpace.posix(errno, "fsync", path) }
                syncs += 1
                sinceSync = 0
            }
        }
        if sinceSync > 0 || syncs == 0 {
            guard fsync(fd) == 0 else { throw ScratchSpace.posix(errno, "fsync", path) }
            syncs += 1
        }
        return Result(bytes: written, elapsed: clock.now - start, syncs: syncs)
    }
}

extension SplitMix64 {
    /// Fills `bytes` with incompressible data.
    mutating func fill(_ bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { raw in
            var i = 0
            while i + 8 <= raw.count {
                raw.storeBytes(of: next(), toByteOffset: i, as: UInt64.self)
                i += 8
            }
            while i < raw.count {
                raw[i] = UInt8(truncatingIfNeeded: next())
                i += 1
            }
        }
    }
}

extension Duration {
    /// The duration in (fractional) seconds.
    var seconds: Double {
        let (s, a) = components
        return Double(s) + Double(a) / 1e18
    }

    /// The duration in nanoseconds, saturating.
    var nanosecondsValue: Int64 {
        let (s, a) = components
        return s.multipliedReportingOverflow(by: 1_000_000_000).overflow ? .max : s * 1_000_000_000 + a / 1_000_000_000
    }
}
