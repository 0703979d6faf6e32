import ArgumentParser
import CatenaClient
import CatenaCore
import CatenaStorage
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `catena chain verify`: the online scrub.
struct ChainVerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Compare the chain's members key by key while it serves (an online scrub).",
        discussion: """
            Every member reads each of its objects back from disk and checks its record and \
            content checksums; the members' answers are compared key by key: key set, LSN, size, \
            content checksum. A key the members disagree on is asked of each member again \
            (--rechecks times, --recheck-delay-ms apart, tail first), since a write may be on its \
            way down the chain; only a disagreement that stays is reported. One line per \
            difference (KIND NODE KEY: what differs), then a summary; progress on stderr when it \
            is a terminal. Exit status 0: the members agree; 4: a difference or damage was found; \
            1: the scrub could not run (the master or a member did not answer).
            """
    )

    @Option(name: .long, help: "Only keys starting with this prefix.") var prefix: String = ""
    @Flag(name: .long, help: "Print one JSON document (differences, summary) instead of lines.") var json = false
    @Option(name: .long, help: "Keys per page asked of each member (at most 1000).") var pageKeys: Int = 256
    @Option(name: .long, help: "MiB of object data a member reads for one page, about (at most 64).") var pageMib: Int = 16
    @Option(name: .long, help: "How often a differing key is asked of every member again before it is reported (0: never).")
    var rechecks: Int = 3
    @Option(name: .long, help: "Milliseconds before each re-check.") var recheckDelayMs: Int = 250
    @Option(name: .long, help: "Seconds one page may take.") var pageTimeout: Double = 300
    @Option(name: .long, help: "The most MB/s of object data any one member reads for the scrub, on average (0: no bound).")
    var rate: Int = 0
    @OptionGroup var options: AdminOptions

    func validate() throws {
        guard (1...1000).contains(pageKeys) else { throw ValidationError("--page-keys must be 1 ... 1000, not \(pageKeys)") }
        guard (1...64).contains(pageMib) else { throw ValidationError("--page-mib must be 1 ... 64, not \(pageMib)") }
        guard (0...100).contains(rechecks) else { throw ValidationError("--rechecks must be 0 ... 100, not \(rechecks)") }
        guard (0...60_000).contains(recheckDelayMs) else { throw ValidationError("--recheck-delay-ms must be 0 ... 60000, not \(recheckDelayMs)") }
        guard pageTimeout > 0 else { throw ValidationError("--page-timeout must be positive") }
        guard rate >= 0 else { throw ValidationError("--rate must be 0 (no bound) or a positive number of MB/s") }
    }

    func run() async throws {
        var settings = ChainVerifier.Settings()
        settings.prefix = Array(prefix.utf8)
        settings.pageKeys = pageKeys
        settings.pageBytes = UInt64(pageMib) << 20
        settings.rechecks = rechecks
        settings.recheckDelay = .milliseconds(recheckDelayMs)
        settings.pageTimeout = .milliseconds(Int(pageTimeout * 1000))
        settings.maxBytesPerSecond = rate == 0 ? nil : UInt64(rate) * 1_000_000
        let verifier = ChainVerifier(admin: try options.admin(), settings: settings)
        let status = StatusLine()
        let json = self.json
        let report = try await verifier.run(onDifference: { difference in
            guard !json else { return }
            status.clear()
            // Unbuffered: each difference shows as it is found.
            FileHandle.standardOutput.write(Data((Self.line(difference) + "\n").utf8))
        }, onProgress: { p in
            let seconds = max(0.001, p.elapsed.secondsValue)
            status.show(String(format: "verify: %d keys compared, %.0f keys/s, %.1f MB/s read, %d difference%@",
                               p.keysCompared, Double(p.keysCompared) / seconds, Double(p.bytesRead) / 1e6 / seconds,
                               p.differences, p.differences == 1 ? "" : "s"))
        })
        status.clear()
        if json {
            print(try VerifyJSON(report).text(), terminator: "")
        } else {
            print(Self.summary(report), terminator: "")
        }
        if !report.differences.isEmpty { throw ExitCode(ExitStatus.dataError.rawValue) }
    }

    /// `KIND NODE KEY: DETAIL`, the key shell-quoted (`-` for damage, which names no key).
    static func line(_ d: ScrubDifference) -> String {
        "\(d.kind.rawValue) \(d.node) \(d.key.map { shellQuoted($0.string) } ?? "-"): \(d.detail)"
    }

    static func summary(_ r: ScrubReport) -> String {
        let members = r.members.map(\.rawValue).joined(separator: ", ")
        let read = r.members.map { "\($0) \(megabytes(r.bytesRead[$0] ?? 0))" }.joined(separator: ", ")
        var out = "chain \(r.chainID) epoch \(r.epoch), members \(members): \(r.keysCompared) key\(r.keysCompared == 1 ? "" : "s") compared"
        out += String(format: " in %.1f s; read %@\n", r.elapsed.secondsValue, read)
        if r.differences.isEmpty {
            out += "no differences: the members agree\n"
        } else {
            var byKind: [String: Int] = [:]
            for d in r.differences { byKind[d.kind.rawValue, default: 0] += 1 }
            let kinds = ScrubDifference.Kind.allCases.compactMap { k in byKind[k.rawValue].map { "\($0) \(k.rawValue)" } }
            out += "\(r.differences.count) difference\(r.differences.count == 1 ? "" : "s") (\(kinds.joined(separator: ", ")))\n"
        }
        if !r.unsettled.isEmpty {
            out += "note: \(r.unsettled.count) key\(r.unsettled.count == 1 ? "" : "s") changed in every look and were not judged (written meanwhile?): "
                + r.unsettled.prefix(10).map { shellQuoted($0.string) }.joined(separator: ", ") + (r.unsettled.count > 10 ? ", …" : "") + "\n"
        }
        if r.epochAfter != r.epoch {
            out += "note: the chain was reconfigured during the scrub (epoch \(r.epoch) → \(r.epochAfter)); run it again to compare its members now\n"
        }
        return out
    }
}

/// The chain verify report as JSON (`--json`).
struct VerifyJSON: Encodable {
    struct Difference: Encodable {
        var kind: String
        var key: String?
        var node: String
        var detail: String
    }
    var chain: UInt32
    var epoch: UInt64
    var epochAfter: UInt64
    var members: [String]
    var keysCompared: Int
    var bytesRead: [String: UInt64]
    var elapsedSeconds: Double
    var differences: [Difference]
    var unsettled: [String]
    var ok: Bool

    init(_ r: ScrubReport) {
        chain = r.chainID
        epoch = r.epoch
        epochAfter = r.epochAfter
        members = r.members.map(\.rawValue)
        keysCompared = r.keysCompared
        bytesRead = Dictionary(uniqueKeysWithValues: r.bytesRead.map { ($0.key.rawValue, $0.value) })
        elapsedSeconds = r.elapsed.secondsValue
        differences = r.differences.map { Difference(kind: $0.kind.rawValue, key: $0.key?.string, node: $0.node.rawValue, detail: $0.detail) }
        unsettled = r.unsettled.map(\.string)
        ok = r.differences.isEmpty
    }

    func text() throws -> String {
        try jsonText(self, plainSlashes: true)
    }
}

/// `catena node verify --data-dir D`: the offline check of a stopped node's files.
struct NodeVerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check a stopped node's data directory, every record of every segment, without changing it.",
        discussion: """
            Reads every segment whole (start-up reads only what hint files do not cover): segment \
            headers, every record's checksums and the framing between records, LSN order, each \
            put's value against its content checksum; reads every live chunked object back through \
            its manifest; compares each hint file with its segment. Opens every file read-only and \
            holds a shared lock on the directory (a running node's directory is refused). One line \
            per problem (file, offset, record, key, what is wrong), notes on what start-up would \
            tidy, then totals. Exit status 0: no problems; 4: a problem was found; 1: the directory \
            could not be checked.
            """
    )

    @Option(name: .long, help: "The node's data directory.") var dataDir: String
    @Flag(name: .long, help: "Print one JSON document instead of lines.") var json = false

    func run() async throws {
        let status = StatusLine()
        let report = try await DataDirectoryVerifier.verify(directory: dataDir) { done, total in
            status.show(String(format: "verify: %.1f of %.1f MB of segments read", Double(done) / 1e6, Double(total) / 1e6))
        }
        status.clear()
        if json {
            print(try NodeVerifyJSON(report).text(), terminator: "")
        } else {
            for p in report.problems { print("\(p.kind.rawValue) \(p)") }
            for n in report.notes { print("note: \(n)") }
            let owner = report.nodeID.map { " (node \($0) of cluster \(report.clusterID ?? "?"))" } ?? ""
            print("checked \(report.directory)\(owner): \(report.segments) segment\(report.segments == 1 ? "" : "s"), "
                  + "\(report.records) records, \(megabytes(report.bytes)); \(report.objects) live objects read back; "
                  + "last record \(report.highestLSN)")
            print(report.problems.isEmpty ? "no problems" : "\(report.problems.count) problem\(report.problems.count == 1 ? "" : "s")")
        }
        if !report.problems.isEmpty { throw ExitCode(ExitStatus.dataError.rawValue) }
    }
}

/// The node verify report as JSON (`--json`).
struct NodeVerifyJSON: Encodable {
    struct Problem: Encodable {
        var kind: String
        var file: String
        var offset: UInt64?
        var lsn: String?
        var key: String?
        var message: String
    }
    var directory: String
    var clusterID: String?
    var nodeID: String?
    var segments: Int
    var records: Int
    var bytes: UInt64
    var objects: Int
    var highestLSN: String
    var notes: [String]
    var problems: [Problem]
    var ok: Bool

    init(_ r: DataDirectoryReport) {
        directory = r.directory
        clusterID = r.clusterID
        nodeID = r.nodeID
        segments = r.segments
        records = r.records
        bytes = r.bytes
        objects = r.objects
        highestLSN = "\(r.highestLSN)"
        notes = r.notes
        problems = r.problems.map {
            Problem(kind: $0.kind.rawValue, file: $0.file, offset: $0.offset, lsn: $0.lsn.map { "\($0)" }, key: $0.key?.string, message: $0.message)
        }
        ok = r.problems.isEmpty
    }

    func text() throws -> String {
        try jsonText(self, plainSlashes: true)
    }
}

/// One status line on stderr, shown only when stderr is a terminal, redrawn at most five times
/// a second, erased by ``clear()``.
final class StatusLine: Sendable {
    private let enabled = isatty(STDERR_FILENO) == 1
    private let state = Mutex((drawn: false, last: ContinuousClock.Instant?.none))

    func show(_ line: String) {
        guard enabled else { return }
        state.withLock { s in
            let now = ContinuousClock.now
            if let last = s.last, now - last < .milliseconds(200) { return }
            s.last = now
            s.drawn = true
            FileHandle.standardError.write(Data(("\r" + line + "\u{1B}[K").utf8))
        }
    }

    func clear() {
        state.withLock { s in
            if s.drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
            s.drawn = false
        }
    }
}

/// `12.3 MB`.
func megabytes(_ bytes: UInt64) -> String {
    String(format: "%.1f MB", Double(bytes) / 1e6)
}
