import CatenaCatchUpWire
import CatenaCore
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaWire
import Logging

/// The benchmark behind `catena bench-catchup`: how fast a node that joins a chain copies the
/// log from its source (``CatchUpSource`` → ``CatchUpReceiver``) over 127.0.0.1, with LZ4 and
/// without.
///
/// It fills a source store with ``Configuration/volume`` bytes of values of
/// ``Configuration/valueSize`` (one `put` record each, appended as a head would), serves it on
/// 127.0.0.1, and in each of ``Configuration/rounds`` rounds copies it once per codec into a fresh
/// receiver store until the receiver holds the whole log; the time is from the receiver's start
/// to the last record durable in its store. Odd rounds run the codecs in the given order, even
/// rounds in reverse, so neither always goes first (the first copy after the fill is often the
/// slowest). The source's log is in the page cache (it was just written), as a busy tail's recent
/// log is. Every copy is preceded by `sync()`.
///
/// The values are moderately compressible: every 4 KiB of a value is 2 KiB of random bytes
/// followed by 2 KiB of a 64-byte text line repeated (LZ4 shrinks them to about half).
public struct CatchUpBenchmark: Sendable {
    /// What to run. Every field has a default except the directory.
    public struct Configuration: Sendable {
        /// A directory for the stores; the benchmark creates and removes subdirectories in it.
        public var directory: String
        /// Bytes of values in the source's log. Default 1 GiB.
        public var volume: Int = 1 << 30
        /// Bytes per value. Default 64 KiB.
        public var valueSize: Int = 64 << 10
        /// Bytes of records per chunk the receiver asks for. Default 4 MiB.
        public var maxChunkBytes: Int = CatchUpRequest.defaultChunkBytes
        /// The receiver's durability. Default ``Durability/batch``.
        public var durability: Durability = .batch
        /// The codecs measured, in order (reversed in even rounds). Default LZ4, then raw.
        public var codecs: [Codec] = [.lz4, .raw]
        /// Rounds, each copying once per codec. Default 3.
        public var rounds: Int = 3
        /// Called with a line of progress; nil: quiet.
        public var progress: (@Sendable (String) -> Void)?
        /// The logger handed to stores and connections. Default: warnings.
        public var logger: Logger = .benchmark(level: .warning)

        /// A configuration with the defaults above.
        public init(directory: String) {
            self.directory = directory
        }

        /// How many records the source holds (at least one).
        public var recordCount: Int { max(1, volume / max(1, valueSize)) }
    }

    /// How the chunks travel (``CatchUpCodec``, named for the command line).
    public enum Codec: String, Sendable, Hashable, CaseIterable {
        /// One LZ4 frame per chunk.
        case lz4
        /// The records as they are.
        case raw
    }

    /// One copy of the whole log.
    public struct CopyResult: Sendable {
        /// The round, from 1.
        public var round: Int
        /// The codec of the chunks.
        public var codec: Codec
        /// Records copied.
        public var records: Int
        /// Bytes of those records (as in the log).
        public var recordBytes: Int
        /// Bytes of catch-up frames received.
        public var wireBytes: Int
        /// Chunks installed.
        public var chunks: Int
        /// From the receiver's start to its last record durable.
        public var elapsed: Duration

        /// Seconds of ``elapsed``.
        public var seconds: Double { Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18 }
        /// Bytes of records installed per second, in MB (10^6 bytes).
        public var megabytesPerSecond: Double { Double(recordBytes) / 1e6 / max(seconds, 1e-9) }
        /// Bytes of records per byte on the wire.
        public var compressionRatio: Double { Double(recordBytes) / Double(max(wireBytes, 1)) }
    }

    /// What a run measured.
    public struct Report: Sendable {
        /// Records in the source's log.
        public var records: Int
        /// Bytes of the source's log.
        public var recordBytes: Int
        /// How long filling the source took.
        public var fillTime: Duration
        /// Every copy, in the order measured.
        public var copies: [CopyResult]

        /// The copy of `codec` with the median throughput (the lower middle one of an even count).
        public func median(_ codec: Codec) -> CopyResult? {
            let mine = copies.filter { $0.codec == codec }.sorted { $0.megabytesPerSecond < $1.megabytesPerSecond }
            return mine.isEmpty ? nil : mine[(mine.count - 1) / 2]
        }

        /// The codecs measured, in the order of their first copy.
        public var codecs: [Codec] {
            var seen: [Codec] = []
            for copy in copies where !seen.contains(copy.codec) { seen.append(copy.codec) }
            return seen
        }

        /// The goal of `codec`: its median copy at ``CatchUpBenchmark/goalMegabytesPerSecond``
        /// or more; not measured when no copy used it.
        public func goal(_ codec: Codec) -> BenchmarkGoal {
            let goal = CatchUpBenchmark.goalMegabytesPerSecond
            let stated = "\(codec): median copy >= \(fixed(goal, 0)) MB/s"
            guard let median = median(codec) else {
                return BenchmarkGoal(goal: stated, measured: "\(codec) was not part of this run", comparison: .atLeast, threshold: goal,
                                     unit: "MB/s", value: nil)
            }
            let all = copies.filter { $0.codec == codec }.map(\.megabytesPerSecond)
            return BenchmarkGoal(goal: stated, measured: "median \(fixed(median.megabytesPerSecond, 0)) MB/s over \(all.count) "
                                     + "cop\(all.count == 1 ? "y" : "ies"), range \(fixed(all.min()!, 0))-\(fixed(all.max()!, 0))",
                                 comparison: .atLeast, threshold: goal, unit: "MB/s", value: median.megabytesPerSecond)
        }

        /// The goal of every codec measured.
        public var goals: [BenchmarkGoal] { codecs.map(goal) }
    }

    /// The chunk sizes a source grants (``CatchUpRequest/chunkBytesRange``).
    public static let chunkBytesRange = CatchUpRequest.chunkBytesRange

    /// The receivers' throughput goal on loopback, in MB/s.
    public static let goalMegabytesPerSecond = 300.0

    /// What to run.
    public var configuration: Configuration

    /// Creates a benchmark.
    public init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    static let clusterID = "bench-catchup"
    static let chainID: ChainID = 1

    /// Fills the source, copies it once per codec, and reports. Removes the stores it made, also
    /// on failure.
    public func run() async throws(CatenaError) -> Report {
        let c = configuration
        guard c.valueSize >= 1 && c.valueSize <= 16 << 20, c.volume >= 1, !c.codecs.isEmpty, (1...20).contains(c.rounds) else {
            throw CatenaError(.invalidArgument, "value size must be 1 byte ... 16 MiB, volume at least 1 byte, rounds 1 ... 20, and at least one codec")
        }
        var sc = StoreConfiguration(directory: c.directory + "/source", clusterID: Self.clusterID, nodeID: "source")
        sc.durability = .batch
        let source = try await Store.open(sc, logger: c.logger)
        do throws(CatenaError) {
            let report = try await measure(source: source)
            await source.close()
            try? ScratchSpace.removeTree(sc.directory)
            return report
        } catch {
            await source.close()
            try? ScratchSpace.removeTree(sc.directory)
            throw error
        }
    }

    private func measure(source: Store) async throws(CatenaError) -> Report {
        let c = configuration
        let clock = ContinuousClock()
        let fillStart = clock.now
        try await fill(source)
        let fillTime = clock.now - fillStart
        c.progress?("source: \(c.recordCount) records of \(sizeName(c.valueSize)), filled in \(String(format: "%.2f", Double(fillTime.components.seconds) + Double(fillTime.components.attoseconds) / 1e18)) s")

        let server = try await FrameServer.bind(host: "127.0.0.1", port: 0, clusterID: Self.clusterID, localID: "source",
                                                acceptedRoles: [.client], logger: c.logger)
        let serving = Task { await server.run { (connection, reader) throws(CatenaError) in
            try await CatchUpSource.answer(connection, &reader, store: source)
        } }
        defer {
            server.close()
            serving.cancel()
        }
        var copies: [CopyResult] = []
        for round in 1...c.rounds {
            for codec in round % 2 == 1 ? c.codecs : c.codecs.reversed() {
                let result = try await copy(from: server.port, codec: codec, round: round, end: source.highestLSN)
                copies.append(result)
                c.progress?("round \(round) \(codec): \(String(format: "%.0f", result.megabytesPerSecond)) MB/s, ratio \(String(format: "%.2f", result.compressionRatio))")
            }
        }
        return Report(records: c.recordCount, recordBytes: copies.first?.recordBytes ?? 0, fillTime: fillTime, copies: copies)
    }

    /// Appends the records, a few MiB per append, at most 64 MiB not yet durable.
    private func fill(_ store: Store) async throws(CatenaError) {
        let c = configuration
        let perAppend = max(1, (4 << 20) / c.valueSize)
        var pending: [AppendTicket] = []
        var seq: UInt64 = 0
        var batch: [EncodedRecord] = []
        for i in 0..<c.recordCount {
            seq += 1
            let record = Record(type: .put, chainID: Self.chainID, key: try Key("bench/\(i)"), lsn: LSN(epoch: 1, seq: seq),
                                timestamp: UInt64(i), requestID: RequestID(high: 1, low: UInt64(i)),
                                value: Self.value(size: c.valueSize, seed: UInt64(i)))
            batch.append(try record.encoded())
            if batch.count == perAppend || i == c.recordCount - 1 {
                pending.append(try store.enqueue(batch))
                batch = []
                if pending.count * perAppend * c.valueSize >= 64 << 20 {
                    try await pending.removeFirst().durable()
                }
            }
        }
        for ticket in pending { try await ticket.durable() }
    }

    /// A value of `size` bytes: per 4 KiB, 2 KiB of random bytes then a 64-byte text line repeated.
    static func value(size: Int, seed: UInt64) -> [UInt8] {
        var generator = SplitMix64(seed: seed)
        let line = Array("\(seed): the quick brown fox jumps over the lazy dog, again and again.....".utf8.prefix(64))
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            var i = 0
            while i < size {
                let random = min(2048, size - i)
                var j = 0
                while j < random {
                    var word = generator.next()
                    let n = min(8, random - j)
                    withUnsafeBytes(of: &word) { w in
                        for k in 0..<n { buffer[i + j + k] = w[k] }
                    }
                    j += n
                }
                i += random
                let text = min(2048, size - i)
                for k in 0..<text { buffer[i + k] = line[k % line.count] }
                i += text
            }
            initialized = size
        }
    }

    /// Copies the whole log into a fresh store with `codec`; removes the store afterwards.
    private func copy(from port: Int, codec: Codec, round: Int, end: LSN) async throws(CatenaError) -> CopyResult {
        let c = configuration
        let directory = c.directory + "/receiver-\(codec)"
        try? ScratchSpace.removeTree(directory)
        _ = try await onOwnThread { () throws(CatenaError) in ScratchSpace.settle(directory) }
        var sc = StoreConfiguration(directory: directory, clusterID: Self.clusterID, nodeID: "receiver")
        sc.durability = c.durability
        let store = try await Store.open(sc, logger: c.logger)
        do throws(CatenaError) {
            var rc = CatchUpReceiver.Configuration(source: Address(host: "127.0.0.1", port: UInt16(port)), clusterID: Self.clusterID,
                                                   chainID: Self.chainID)
            rc.compress = codec == .lz4
            rc.maxChunkBytes = c.maxChunkBytes
            rc.name = "bench-receiver"
            let receiver = CatchUpReceiver(configuration: rc, store: store, logger: c.logger)
            let clock = ContinuousClock()
            let start = clock.now
            let progress = try await receiver.run(until: { $0.lastLSN == end })
            let elapsed = clock.now - start
            guard progress.lastLSN == end else {
                throw CatenaError(.corruption, "the receiver stopped at \(progress.lastLSN), not at the source's end \(end)")
            }
            await store.close()
            try? ScratchSpace.removeTree(directory)
            return CopyResult(round: round, codec: codec, records: progress.recordsInstalled, recordBytes: progress.recordBytesInstalled,
                              wireBytes: progress.wireBytes, chunks: progress.chunksInstalled, elapsed: elapsed)
        } catch {
            await store.close()
            try? ScratchSpace.removeTree(directory)
            throw error
        }
    }
}

/// What `catena bench-catchup --json` writes: the settings, every copy and each codec's median as
/// the table shows them, and the goals.
public struct CatchUpBenchmarkReport: Codable, Sendable {
    /// One copy of the whole log.
    public struct Copy: Codable, Sendable {
        /// The round, from 1.
        public var round: Int
        /// lz4 or raw.
        public var codec: String
        /// Records copied.
        public var records: Int
        /// Bytes of those records.
        public var recordBytes: Int
        /// Bytes of catch-up frames received.
        public var wireBytes: Int
        /// Chunks installed.
        public var chunks: Int
        /// From the receiver's start to its last record durable.
        public var seconds: Double
        /// Megabytes (10^6 bytes) of records installed per second.
        public var megabytesPerSecond: Double
        /// Bytes of records per byte on the wire.
        public var compressionRatio: Double
    }

    /// One codec over the rounds.
    public struct Codec: Codable, Sendable {
        /// lz4 or raw.
        public var codec: String
        /// Copies with this codec.
        public var copies: Int
        /// The median copy's MB/s (the lower middle one of an even count).
        public var medianMegabytesPerSecond: Double
        /// The slowest copy's MB/s.
        public var minMegabytesPerSecond: Double
        /// The fastest copy's MB/s.
        public var maxMegabytesPerSecond: Double
        /// The median copy's compression ratio.
        public var compressionRatio: Double
        /// Whether the median met the goal.
        public var goalMet: Bool
    }

    /// Bytes of values in the source's log, as asked.
    public var volume: Int
    /// Bytes per value.
    public var valueSize: Int
    /// Bytes of records per chunk the receiver asks for.
    public var chunkBytes: Int
    /// The receiver's durability.
    public var durability: String
    /// Rounds.
    public var rounds: Int
    /// The machine's cores.
    public var cores: Int
    /// Records in the source's log.
    public var records: Int
    /// Bytes of the source's log.
    public var recordBytes: Int
    /// How long filling the source took.
    public var fillSeconds: Double
    /// Every copy, in the order measured.
    public var copies: [Copy]
    /// Each codec measured, in the order of its first copy.
    public var codecs: [Codec]
    /// Each codec's goal, judged.
    public var goals: [BenchmarkGoal]

    /// The report of `report`, measured with `configuration` on a machine with `cores` cores.
    public init(_ report: CatchUpBenchmark.Report, configuration: CatchUpBenchmark.Configuration, cores: Int) {
        volume = configuration.volume
        valueSize = configuration.valueSize
        chunkBytes = configuration.maxChunkBytes
        durability = configuration.durability.rawValue
        rounds = configuration.rounds
        self.cores = cores
        records = report.records
        recordBytes = report.recordBytes
        fillSeconds = report.fillTime.seconds
        copies = report.copies.map { c in
            Copy(round: c.round, codec: c.codec.rawValue, records: c.records, recordBytes: c.recordBytes, wireBytes: c.wireBytes,
                 chunks: c.chunks, seconds: c.seconds, megabytesPerSecond: c.megabytesPerSecond, compressionRatio: c.compressionRatio)
        }
        codecs = report.codecs.compactMap { codec in
            guard let median = report.median(codec) else { return nil }
            let all = report.copies.filter { $0.codec == codec }.map(\.megabytesPerSecond)
            return Codec(codec: codec.rawValue, copies: all.count, medianMegabytesPerSecond: median.megabytesPerSecond,
                         minMegabytesPerSecond: all.min()!, maxMegabytesPerSecond: all.max()!, compressionRatio: median.compressionRatio,
                         goalMet: report.goal(codec).met == true)
        }
        goals = report.goals
    }
}
