import ArgumentParser
import CatenaBench
import CatenaClient
import CatenaCore
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Options every client command shares.
struct ClientOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Master address(es), HOST:PORT[,HOST:PORT]. Default: $CATENA_MASTER or 127.0.0.1:7000.", valueName: "addresses"))
    var master: String?

    @Option(name: .long, help: "Give up after this many seconds (retries included).")
    var timeout: Double = 15

    var masters: [String] {
        let text = master ?? ProcessInfo.processInfo.environment["CATENA_MASTER"] ?? "127.0.0.1:7000"
        return text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
        for m in masters {
            do { _ = try Address(parsing: m) } catch { throw ValidationError("--master: \(error.message)") }
        }
    }

    func connect(readMode: ReadMode = .linearizable, ack: AckMode = .all) async throws(CatenaError) -> CatenaClient {
        var configuration = CatenaClient.Configuration()
        configuration.readMode = readMode
        configuration.ack = ack
        configuration.requestTimeout = .milliseconds(Int(timeout * 1000))
        configuration.name = "catena-cli"
        var logger = Logger(label: "catena.cli")
        logger.logLevel = .error
        let store = try CatenaClient(masters: masters, configuration: configuration, logger: logger)
        try await store.connect()
        return store
    }
}

extension ReadMode: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
    public static var allValueStrings: [String] { allCases.map(\.description) }
}

extension AckMode: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
}

/// When a write returns.
struct AckOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("all (every member holds it: committed; the default), head (the head holds it: lost if the head fails before passing it on) or k, a number (the first k members hold it).", valueName: "mode"))
    var ack: AckMode = .all
}

/// Which members may answer a read, and what it may return.
struct ReadOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("linearizable (any member, CRAQ; the default), tail (the tail only) or any (any member's newest version: may be stale or not yet committed).", valueName: "mode"))
    var readMode: ReadMode = .linearizable
}

/// A write's condition, as `put` and `rm` take it.
struct ConditionOptions: ParsableArguments {
    @Flag(name: .long, help: "Only if no object is stored under the key (create only).")
    var ifAbsent = false
    @Option(name: .long, help: ArgumentHelp("Only if the key's newest version is the one written at this LSN (as `catena stat` prints it).", valueName: "epoch.seq"))
    var ifVersion: String?
    @Option(name: .long, help: ArgumentHelp("Only if the object's content checksum is this (XXH3-64 in hex, as `catena stat` prints it).", valueName: "hex"))
    var ifChecksum: String?

    func validate() throws {
        _ = try condition
    }

    /// The condition asked for, or nil.
    var condition: WriteCondition? {
        get throws { try Self.condition(absent: ifAbsent, version: ifVersion, checksum: ifChecksum) }
    }

    /// The condition `--if-absent`, `--if-version` or `--if-checksum` asks for (at most one).
    static func condition(absent ifAbsent: Bool, version ifVersion: String?, checksum ifChecksum: String?) throws -> WriteCondition? {
        guard [ifAbsent, ifVersion != nil, ifChecksum != nil].filter({ $0 }).count <= 1 else {
            throw ValidationError("give at most one of --if-absent, --if-version and --if-checksum")
        }
        if ifAbsent { return .absent }
        if let ifVersion {
            guard let lsn = LSN(parsing: ifVersion) else { throw ValidationError("--if-version takes an LSN as epoch.seq (e.g. 1.42), not '\(ifVersion)'") }
            return .version(lsn)
        }
        if let ifChecksum {
            guard let value = parseChecksum(ifChecksum) else {
                throw ValidationError("--if-checksum takes an XXH3-64 checksum in hex (e.g. xxh3-64:9c0ffee), not '\(ifChecksum)'")
            }
            return .contentChecksum(value)
        }
        return nil
    }
}

/// A content checksum as `catena stat` and `catena upload part` print it (`xxh3-64:` and up to 16
/// hex digits; the prefix may be left out).
func parseChecksum(_ text: String) -> UInt64? {
    let hex = text.hasPrefix("xxh3-64:") ? String(text.dropFirst(8)) : text
    guard !hex.isEmpty, hex.count <= 16 else { return nil }
    return UInt64(hex, radix: 16)
}

/// Maps a missing object to the CLI's `not found: KEY` line.
func notFound(_ key: String, _ error: CatenaError) -> CatenaError {
    error.code == .notFound ? CatenaError(.notFound, "not found: \(key)") : error
}

/// `catena put KEY FILE`.
struct Put: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Store a file (or stdin) under a key.")

    @Argument(help: "The key.") var key: String
    @Argument(help: "The file to store; - reads stdin.") var file: String
    @Option(name: .long, help: "The content type to store with the object.") var contentType: String?
    @Option(name: .long, help: ArgumentHelp("Store the file as a multipart upload in parts of this size (e.g. 64MiB), several at once.", valueName: "size"))
    var partSize: String?
    @Option(name: .long, help: "With --part-size: how many parts upload at once.") var parallel = 4
    @Flag(name: .shortAndLong, help: "Say on stderr what was stored (size, LSN).") var verbose = false
    @OptionGroup(title: "Conditions (the write applies only if the key's newest version meets it)") var conditions: ConditionOptions
    @OptionGroup var acknowledgement: AckOptions
    @OptionGroup var client: ClientOptions

    func validate() throws {
        if let partSize {
            guard let n = parseSize(partSize), n >= 1 else { throw ValidationError("--part-size takes a size such as 64MiB, not '\(partSize)'") }
            guard file != "-" else { throw ValidationError("--part-size needs a file, not stdin") }
        }
        guard parallel >= 1 else { throw ValidationError("--parallel must be at least 1") }
    }

    func run() async throws {
        let condition = try conditions.condition
        let store = try await client.connect(ack: acknowledgement.ack)
        defer { Task { await store.close() } }
        let receipt: WriteReceipt
        if let partSize, let size = parseSize(partSize) {
            let bar = ProgressBar(verb: "put")
            defer { bar.finish() }
            receipt = try await store.putMultipart(key, contentsOf: file, partSize: size, parallelism: parallel, contentType: contentType,
                                                   condition: condition, progress: bar.progress)
        } else if file == "-" {
            // One piece: a plain put. More: a streamed, chunked put that never holds the whole input.
            let handle = FileHandle.standardInput
            var pieces = FileChunks(handle: handle).makeAsyncIterator()
            let first = try await pieces.next() ?? []
            if let second = try await pieces.next() {
                receipt = try await store.put(key, streaming: FileChunks(handle: handle, prefix: [first, second]), contentType: contentType,
                                              condition: condition)
            } else {
                receipt = try await store.put(key, first, contentType: contentType, condition: condition)
            }
        } else {
            let bar = ProgressBar(verb: "put")
            defer { bar.finish() }
            receipt = try await store.put(key, contentsOf: file, contentType: contentType, condition: condition, progress: bar.progress)
        }
        if verbose { writeStandardError("stored \(key): \(receipt.size) bytes at LSN \(receipt.lsn)") }
    }

}

/// `catena get KEY [-o FILE] [--range FIRST-LAST]`.
struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write an object's bytes to stdout or a file.")

    @Argument(help: "The key.") var key: String
    @Option(name: .shortAndLong, help: "Write to this file instead of stdout.") var output: String?
    @Option(name: .long, parsing: .unconditional, help: "Only these bytes: FIRST-LAST (both included, from 0, as HTTP's Range), FIRST- (to the end) or -N (the last N).")
    var range: String?
    @OptionGroup var read: ReadOptions
    @OptionGroup var client: ClientOptions

    func validate() throws {
        if let range { _ = try Self.parse(range: range) }
    }

    /// A `--range` as an offset and length, or the last N bytes.
    enum ByteRange: Equatable {
        case bytes(Range<UInt64>)
        case suffix(UInt64)
    }

    static func parse(range text: String) throws -> ByteRange {
        let parts = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 else { throw ValidationError("--range: expected FIRST-LAST, FIRST- or -N, not '\(text)'") }
        if parts[0].isEmpty {
            guard let n = UInt64(parts[1]), n > 0 else { throw ValidationError("--range: -N needs a positive N, not '\(text)'") }
            return .suffix(n)
        }
        guard let first = UInt64(parts[0]) else { throw ValidationError("--range: '\(parts[0])' is not a byte offset") }
        if parts[1].isEmpty { return .bytes(first..<UInt64.max) }
        guard let last = UInt64(parts[1]), last >= first, last < UInt64.max else {
            throw ValidationError("--range: LAST must be a byte offset at or after FIRST, not '\(text)'")
        }
        return .bytes(first..<(last + 1))
    }

    func run() async throws {
        let store = try await client.connect(readMode: read.readMode)
        defer { Task { await store.close() } }
        let parsed = try range.map(Self.parse(range:))
        let bar = ProgressBar(verb: "get")
        defer { bar.finish() }
        let stream: ObjectStream
        do throws(CatenaError) {
            switch parsed {
            case nil:
                stream = try await store.getStreaming(key)
            case .bytes(let r)?:
                stream = try await store.getStreaming(key, range: r)
            case .suffix(let n)?:
                // The last N bytes of the version whose size was read: if the key was written in
                // between, read its size again.
                var attempt = 0
                while true {
                    let info = try await store.head(key)
                    let candidate = try await store.getStreaming(key, range: (info.size - min(n, info.size))..<info.size)
                    if candidate.info.lsn == info.lsn || attempt == 4 {
                        guard candidate.info.lsn == info.lsn else {
                            throw CatenaError(.unavailable, "'\(key)' kept changing while its last \(n) bytes were read; try again")
                        }
                        stream = candidate
                        break
                    }
                    attempt += 1
                }
            }
        } catch {
            throw notFound(key, error)
        }
        if let output {
            // Into a temporary file renamed at the end, so a failed or corrupt read leaves no partial file.
            try await stream.write(to: output, progress: bar.progress)
            return
        }
        var received: UInt64 = 0
        var chunks = stream.makeAsyncIterator()
        while let chunk = try await chunks.nextChunk() {
            try FileHandle.standardOutput.write(contentsOf: chunk)
            received += UInt64(chunk.count)
            bar.progress(received, UInt64(stream.servedRange.count))
        }
    }

}

/// `catena rm KEY...`.
struct Remove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Delete objects.",
        discussion: "Deleting a missing key succeeds. With several keys, each is deleted on its own (16 at a time); a key that could not be deleted is named on stderr, and the exit status is 1.")

    @Argument(help: "The keys.") var keys: [String]
    @Option(name: .long, help: ArgumentHelp("Only if the key's newest version is the one written at this LSN (one key only).", valueName: "epoch.seq"))
    var ifVersion: String?
    @Option(name: .long, help: ArgumentHelp("Only if the object's content checksum is this XXH3-64 in hex (one key only).", valueName: "hex"))
    var ifChecksum: String?
    @OptionGroup var client: ClientOptions

    private var condition: WriteCondition? {
        get throws { try ConditionOptions.condition(absent: false, version: ifVersion, checksum: ifChecksum) }
    }

    func validate() throws {
        guard !keys.isEmpty else { throw ValidationError("give at least one key") }
        _ = try condition
        if keys.count > 1 && (ifVersion != nil || ifChecksum != nil) {
            throw ValidationError("--if-version and --if-checksum take one key")
        }
    }

    func run() async throws {
        let condition = try self.condition
        let store = try await client.connect()
        defer { Task { await store.close() } }
        if keys.count == 1 {
            try await store.delete(keys[0], condition: condition)
            return
        }
        var failed = 0
        for result in await store.delete(keys) {
            if case .failure(let error) = result.outcome {
                failed += 1
                writeStandardError("catena: cannot delete \(result.key): \(error.message) [\(error.code)]")
            }
        }
        if failed > 0 { throw ExitCode(1) }
    }
}

/// `catena ls [PREFIX] [--delimiter D]`.
struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "List keys (one per line), in byte order.",
        discussion: "With --delimiter, keys that hold it after the prefix are listed once per common prefix (cut just after the delimiter), as folders: `catena ls photos/ --delimiter /`.")

    @Argument(help: "Only keys starting with this.") var prefix: String = ""
    @Option(name: .shortAndLong, help: "Roll keys up into common prefixes at this delimiter (e.g. /).") var delimiter: String?
    @Flag(name: .shortAndLong, help: "Also print size, LSN and content type.") var long = false
    @Flag(help: "One JSON object per line (JSON Lines), as `stat --json` prints it but without parts; a common prefix as {\"prefix\": ...}.") var json = false
    @OptionGroup var client: ClientOptions

    func validate() throws {
        if delimiter == "" { throw ValidationError("--delimiter must not be empty") }
        if json && long { throw ValidationError("give --json or --long, not both") }
    }

    func run() async throws {
        let store = try await client.connect()
        defer { Task { await store.close() } }
        var cursor: Key?
        repeat {
            let page = try await store.list(prefix: prefix, delimiter: delimiter, after: cursor)
            // Objects and common prefixes together, in byte order.
            var lines: [(Key, String)] = try page.objects.map { info in
                (info.key, json ? try ObjectJSON(info, listed: true).line() : long ? "\(info.key)\t\(info.size)\t\(info.lsn)\t\(info.contentType ?? "-")\n" : "\(info.key)\n")
            }
            lines += try page.commonPrefixes.map { ($0, json ? try ObjectJSON.prefixLine($0) : long ? "\($0)\t-\t-\tprefix\n" : "\($0)\n") }
            lines.sort { $0.0 < $1.0 }
            var out = ""
            for (_, line) in lines { out += line }
            FileHandle.standardOutput.write(Data(out.utf8))
            cursor = page.nextCursor
        } while cursor != nil
    }
}

/// `catena cp SOURCE DESTINATION`.
struct Copy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cp", abstract: "Copy an object to another key, inside the cluster (its bytes do not come to this machine).",
        discussion: "The copy keeps the content checksum, content type and metadata. A large object takes as long to copy as to write: give --timeout accordingly.")

    @Argument(help: "The key to copy.") var source: String
    @Argument(help: "The key to copy it to.") var destination: String
    @Flag(name: .shortAndLong, help: "Say on stderr where the copy is (LSN).") var verbose = false
    @OptionGroup(title: "Conditions on the destination (the copy applies only if its newest version meets it)") var conditions: ConditionOptions
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let condition = try conditions.condition
        let store = try await client.connect()
        defer { Task { await store.close() } }
        let lsn: LSN
        do { lsn = try await store.copy(from: source, to: destination, condition: condition) } catch { throw notFound(source, error) }
        if verbose { writeStandardError("copied \(source) to \(destination) at LSN \(lsn)") }
    }
}

/// `catena settle KEY REQUEST-ID`.
struct Settle: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Tell whether a write whose outcome is unknown (a timeout) was applied.",
        discussion: "Prints `applied at LSN E.S` (exit 0) or `not applied` (exit 2); either answer is final: a write settled as not applied is refused if a copy of it still arrives. Ask soon: a head that may have forgotten a write that old (the request window, 60 s by default, or a restart since) refuses with settlementExpired rather than guess.")

    @Argument(help: "The key the write was for.") var key: String
    @Argument(help: "The write's request id (32 hex digits, as the error named it).") var requestID: String
    @OptionGroup var client: ClientOptions

    func validate() throws {
        guard RequestID(parsing: requestID) != nil else { throw ValidationError("a request id is 32 hex digits, not '\(requestID)'") }
    }

    func run() async throws {
        let store = try await client.connect()
        defer { Task { await store.close() } }
        switch try await store.outcome(ofWrite: RequestID(parsing: requestID)!, key: key) {
        case .applied(let lsn):
            print("applied at LSN \(lsn)")
        case .notApplied:
            print("not applied")
            throw ExitCode(2)
        }
    }
}

/// `catena stat KEY`.
struct Stat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show an object's metadata.")

    @Argument(help: "The key.") var key: String
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var read: ReadOptions
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let store = try await client.connect(readMode: read.readMode)
        defer { Task { await store.close() } }
        let info: ObjectInfo
        do { info = try await store.head(key) } catch { throw notFound(key, error) }
        if json { return FileHandle.standardOutput.write(Data(try ObjectJSON(info).line().utf8)) }
        var lines = [
            "key: \(info.key)",
            "size: \(info.size)",
            "lsn: \(info.lsn)",
            "content-checksum: xxh3-64:\(info.contentChecksum.hex16)",
            "content-type: \(info.contentType ?? "-")",
            "written: \(Date(timeIntervalSince1970: Double(info.timestamp) / 1e9).ISO8601Format())",
            "chunks: \(info.chunkCount)",
        ]
        if !info.parts.isEmpty { lines.append("parts: \(info.parts.count)") }
        for (name, value) in info.userMetadata.sorted(by: { $0.key < $1.key }) { lines.append("meta-\(name): \(value)") }
        print(lines.joined(separator: "\n"))
    }
}

/// An object's metadata as JSON (`stat --json`, a line of `ls --json`), for scripts.
struct ObjectJSON: Encodable {
    var key: String
    var size: UInt64
    var lsn: String
    var contentChecksum: String
    var contentType: String?
    var written: String
    var chunks: Int
    /// The number of parts of a multipart object; nil in listings (they do not carry them).
    var parts: Int?
    var metadata: [String: String]

    init(_ info: ObjectInfo, listed: Bool = false) {
        key = info.key.description
        size = info.size
        lsn = "\(info.lsn)"
        contentChecksum = "xxh3-64:\(info.contentChecksum.hex16)"
        contentType = info.contentType
        written = Date(timeIntervalSince1970: Double(info.timestamp) / 1e9).ISO8601Format()
        chunks = info.chunkCount
        parts = listed ? nil : info.parts.count
        metadata = info.userMetadata
    }

    /// One line of JSON.
    func line() throws -> String {
        try jsonText(self, compact: true, snakeCase: true, plainSlashes: true)
    }

    /// A common prefix of `ls --delimiter --json`.
    static func prefixLine(_ prefix: Key) throws -> String {
        try jsonText(["prefix": prefix.description], compact: true, plainSlashes: true)
    }
}

/// A file read in 1 MiB pieces, as an `AsyncSequence`.
struct FileChunks: AsyncSequence, @unchecked Sendable {
    // FileHandle is not Sendable; one iterator reads it from one task at a time.
    typealias Element = [UInt8]
    let handle: FileHandle
    /// Pieces already read, yielded first.
    var prefix: [[UInt8]] = []

    func makeAsyncIterator() -> Iterator { Iterator(handle: handle, prefix: prefix[...]) }

    struct Iterator: AsyncIteratorProtocol {
        let handle: FileHandle
        var prefix: ArraySlice<[UInt8]>
        var done = false

        mutating func next() async throws -> [UInt8]? {
            if let piece = prefix.popFirst() { return piece }
            guard !done else { return nil }
            guard let data = try handle.read(upToCount: 1 << 20), !data.isEmpty else {
                done = true
                return nil
            }
            return [UInt8](data)
        }
    }
}

/// A one-line progress bar on stderr for large transfers: shown only when stderr is a terminal
/// and the transfer is at least 4 MiB, redrawn at most ten times a second, erased at the end.
final class ProgressBar: @unchecked Sendable {
    // Guarded by `lock`: a put's chunks report from the put's task, in turn.
    private let verb: String
    private let enabled = isatty(STDERR_FILENO) == 1
    private let lock = NSLock()
    private let started = ContinuousClock.now
    private var lastDraw: ContinuousClock.Instant?
    private var drawn = false

    init(verb: String) {
        self.verb = verb
    }

    /// Reports `done` of `total` bytes.
    var progress: TransferProgress {
        { [self] done, total in self.update(done, total) }
    }

    private func update(_ done: UInt64, _ total: UInt64?) {
        guard enabled, let total, total >= 4 << 20 else { return }
        lock.lock()
        defer { lock.unlock() }
        let now = ContinuousClock.now
        if let lastDraw, now - lastDraw < .milliseconds(100), done < total { return }
        lastDraw = now
        drawn = true
        let seconds = max(0.001, (now - started).secondsValue)
        let mib = { (bytes: UInt64) in Double(bytes) / 1_048_576 }
        let line = verb + String(format: " %.1f / %.1f MiB  %3d%%  %.1f MiB/s", mib(done), mib(total),
                                 Int(done * 100 / max(total, 1)), mib(done) / seconds)
        FileHandle.standardError.write(Data(("\r" + line + "\u{1B}[K").utf8))
    }

    /// Erases the bar, if it was drawn.
    func finish() {
        lock.lock()
        defer { lock.unlock() }
        if drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        drawn = false
    }
}

extension Put: KeyedWrite { var writtenKey: String { key } }
extension Copy: KeyedWrite { var writtenKey: String { destination } }
