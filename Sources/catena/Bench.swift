import ArgumentParser
import CatenaBench
import CatenaClient
import CatenaCore
import Dispatch
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `catena bench`: the load generator for a running cluster.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Load-test a running cluster: a mix of puts, gets, deletes, heads and lists; latency percentiles per operation.",
        discussion: """
            Workers (--concurrency) send operations through the client library to the cluster \
            the master (--master, $CATENA_MASTER) names, on keys PREFIX00000000 ... under --prefix. \
            First every key is written once (the prefill; --no-prefill skips it), then the mix \
            runs for --duration or --ops. Closed loop by default (each worker sends its next \
            operation when the last returns); --rate R is an open loop: operation i is due at \
            i/R s and its latency counts from then, so a stall shows in every operation it \
            delays. On a terminal a line per second shows progress; at the end a table gives \
            per operation count, ops/s, MB/s, latency p50/p90/p99/p99.9/max and errors by code. \
            --verify stamps every value (key, writer, sequence) and checks every read against \
            what this run wrote and had acknowledged, then reads every written key again: any \
            lost acknowledged write, stale or foreign or damaged value is printed and the exit \
            status is 4. A phase in which every operation failed for --give-up-after seconds \
            (the cluster is down) is given up, and the exit status is 3. Ctrl-C stops the load \
            and prints what was measured (twice: also skips the final verification). Don't point \
            two --verify runs at one prefix at once.
            """
    )

    @OptionGroup var client: ClientOptions
    @OptionGroup var read: ReadOptions
    @OptionGroup var acknowledgement: AckOptions
    @Option(help: "How long the measured run lasts (e.g. 30s, 2m); default 10s unless --ops.") var duration: String?
    @Option(help: "Stop after this many operations instead of a duration.") var ops: Int?
    @Option(help: "Operations in flight at once (workers).") var concurrency: Int = 16
    @Option(help: "Open loop: this many operations per second in all (latency counted from when each is due).") var rate: Double?
    @Option(help: ArgumentHelp("Value sizes: 4KiB, a range 1KiB-64KiB (uniform), or weights 4KiB=90,1MiB=10.", valueName: "sizes")) var size: String = "4KiB"
    @Option(help: "Keys in the key space.") var keys: Int = 1000
    @Option(help: ArgumentHelp("uniform, zipf (YCSB's 0.99, hot keys scattered) or latest (reads favour recent writes).", valueName: "dist")) var keyDist: String = "uniform"
    @Option(help: ArgumentHelp("Operations and weights.", valueName: "put=N,get=N,delete=N,head=N,list=N")) var mix: String = "put=50,get=50"
    @Option(help: "Prefix of every key the load uses.") var prefix: String = "bench/"
    @Option(help: "Seed of every random choice (default: random, printed).") var seed: UInt64?
    @Flag(help: "Check every read against what this run wrote and had acknowledged; exit 4 on any difference.") var verify = false
    @Flag(name: .customLong("no-prefill"), help: "Don't write every key once before measuring.") var noPrefill = false
    @Option(help: "Give a phase up once every operation failed for this many seconds.") var giveUpAfter: Double = 30
    @Option(help: "Client library instances the workers share (each has its own connections).") var connections: Int = 1
    @Option(help: "Connections from each client instance to each node.") var connectionsPerNode: Int = 2
    @Option(help: ArgumentHelp("Also write the report as JSON to this file (- for stdout, in place of the table).", valueName: "file")) var json: String?
    @Option(help: ArgumentHelp("Write each operation's latency distribution to DIR/OP.hgrm (HdrHistogram's text format, milliseconds).", valueName: "dir")) var hgrm: String?

    func validate() throws {
        guard concurrency >= 1, concurrency <= 4096 else { throw ValidationError("--concurrency must be 1 ... 4096") }
        guard keys >= 1 else { throw ValidationError("--keys must be positive") }
        guard giveUpAfter > 0 else { throw ValidationError("--give-up-after must be positive") }
        guard connections >= 1, connectionsPerNode >= 1, connectionsPerNode <= 64 else { throw ValidationError("--connections and --connections-per-node must be positive (at most 64 per node)") }
        if let ops, ops < 1 { throw ValidationError("--ops must be positive") }
        if ops != nil && duration != nil { throw ValidationError("give --duration or --ops, not both") }
        if let rate { guard rate > 0, rate <= 10_000_000 else { throw ValidationError("--rate must be positive") } }
        _ = try limit()
        let workload = try self.workload(seed: 0)
        if verify && acknowledgement.ack != .all {
            throw ValidationError("--verify checks that every acknowledged write is read back, which --ack \(acknowledgement.ack) does not promise at once (a read sees a write once it is committed); use --ack all")
        }
        if verify && read.readMode == .any {
            throw ValidationError("--verify checks that every read is current, which --read-mode any does not promise; use linearizable or tail")
        }
        if verify && workload.sizes.smallest < LoadStamp.size {
            throw ValidationError("--verify needs values of at least \(LoadStamp.size) bytes (a stamp), not \(sizeName(workload.sizes.smallest))")
        }
        if workload.sizes.largest > 1 << 30 { throw ValidationError("--size: at most 1 GiB") }
    }

    func limit() throws -> LoadGenerator.Configuration.Limit {
        if let ops { return .operations(ops) }
        guard let d = parseDuration(duration ?? "10s"), d > .zero else { throw ValidationError("--duration: cannot read '\(duration ?? "")' (e.g. 30s, 2m, 500ms)") }
        return .duration(d)
    }

    func workload(seed: UInt64) throws -> LoadWorkload {
        do {
            guard let distribution = LoadWorkload.KeyDistribution(rawValue: keyDist) else {
                throw CatenaError(.invalidArgument, "--key-dist: one of uniform, zipf, latest, not '\(keyDist)'")
            }
            return LoadWorkload(mix: try .init(parsing: mix), sizes: try .init(parsing: size), keys: keys, keyDistribution: distribution, prefix: prefix, seed: seed)
        } catch let error as CatenaError {
            throw ValidationError(error.message)
        }
    }

    func run() async throws {
        let watcher = exitWhenParentExits()
        defer { watcher?.cancel() }
        let seed = seed ?? UInt64.random(in: 0...UInt64(UInt32.max))
        var configuration = LoadGenerator.Configuration(workload: try workload(seed: seed))
        configuration.concurrency = concurrency
        configuration.limit = try limit()
        configuration.rate = rate
        configuration.verify = verify
        configuration.prefill = !noPrefill
        configuration.giveUpAfter = .milliseconds(Int(giveUpAfter * 1000))
        var clients: [CatenaClient] = []
        for _ in 0..<connections {
            var c = CatenaClient.Configuration()
            c.requestTimeout = .milliseconds(Int(client.timeout * 1000))
            c.connectionsPerNode = connectionsPerNode
            c.readMode = read.readMode
            c.ack = acknowledgement.ack
            c.name = "catena-bench"
            var logger = Logger(label: "catena.bench")
            logger.logLevel = .error
            let store = try CatenaClient(masters: client.masters, configuration: c, logger: logger)
            try await store.connect()
            clients.append(store)
        }
        let generator = LoadGenerator(clients: clients, configuration: configuration, run: UInt64.random(in: 1...UInt64.max))
        let toStandardOutput = json == "-"
        let say = { (line: String) in
            if toStandardOutput { writeStandardError(line) } else { print(line) }
        }
        let loop = rate.map { String(format: "open loop at %.0f ops/s", $0) } ?? "closed loop"
        let length = switch configuration.limit {
        case .duration(let d): String(format: "%.1f s", d.secondsValue)
        case .operations(let n): "\(n) operations"
        }
        say("catena bench: \(concurrency) workers, \(loop), \(length); mix \(configuration.workload.mix); values \(configuration.workload.sizes); "
            + "\(keys) keys (\(keyDist)) under '\(prefix)'; reads \(read.readMode); writes acknowledged by \(acknowledgement.ack); seed \(seed)\(verify ? "; verifying" : "")")

        // Ctrl-C: the first stops the load (and the report follows), the second the final
        // verification, the third exits at once.
        signal(SIGINT, SIG_IGN)
        let interrupts = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        let presses = Counter()
        interrupts.setEventHandler {
            let n = presses.increment()
            if n >= 3 { Glibc.exit(130) }
            writeStandardError(n == 1 ? "\ncatena bench: stopping (Ctrl-C again to skip the final verification, a third time to quit)" : "\ncatena bench: stopping")
            generator.stop()
        }
        interrupts.resume()
        let live = isatty(STDERR_FILENO) == 1
        let report = await generator.run { p in
            guard live else { return }
            writeStandardError(String(format: "%@ %6.0fs %10.0f ops/s %9.1f MB/s   %d ops, %d errors", p.phase.padding(toLength: 7, withPad: " ", startingAt: 0),
                                      Double(p.elapsed.components.seconds), p.operationsPerSecond, p.megabytesPerSecond, p.operations, p.errors))
        }
        interrupts.cancel()
        signal(SIGINT, SIG_DFL)
        for c in clients { await c.close() }

        if toStandardOutput {
            FileHandle.standardOutput.write(try report.json())
            print("")
        } else {
            print(report.table())
        }
        if let json, !toStandardOutput { try report.json().write(to: URL(fileURLWithPath: json)) }
        if let hgrm {
            let paths = try report.writeHistograms(to: hgrm)
            say("latency distributions: " + paths.joined(separator: ", "))
        }
        if let verification = report.verification {
            if verification.problems > 0 { throw ExitCode(ExitStatus.dataError.rawValue) }
            if verification.keysUnverified > 0 { throw ExitCode(ExitStatus.unavailable.rawValue) }
        }
        if report.gaveUp { throw ExitCode(ExitStatus.unavailable.rawValue) }
    }
}

/// A counter shared with a signal handler.
private final class Counter: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var value = 0

    func increment() -> Int {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value
    }
}
