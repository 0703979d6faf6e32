import ArgumentParser
import CatenaClient
import CatenaCore
import Foundation

/// `catena upload ...`: multipart uploads step by step, as S3's create-multipart-upload,
/// upload-part, list-parts, complete-multipart-upload, abort-multipart-upload and
/// list-multipart-uploads.
struct UploadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upload", abstract: "Multipart uploads, step by step.",
        discussion: "An upload is opened with `create`, which prints its id; parts (numbered 1 to 10000) are added with `part`, in any order, from any machine, several at once; `complete` makes the object visible at once, made of the parts it names; `abort` drops it. An upload neither completed nor aborted expires 7 days after its creation. `catena put --part-size` does all of it for one file.",
        subcommands: [Create.self, Part.self, Parts.self, Complete.self, Abort.self, ListUploads.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Open a multipart upload of a key; prints its id.")
        @Argument(help: "The key the object will have.") var key: String
        @Option(name: .long, help: "The object's content type.") var contentType: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let store = try await client.connect()
            defer { Task { await store.close() } }
            print(try await store.createMultipartUpload(key, contentType: contentType).id)
        }
    }

    struct Part: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Store a file (or stdin) as a part of an upload; prints `NUMBER SIZE xxh3-64:CHECKSUM`, what `complete` names it by.")
        @OptionGroup var target: UploadArguments
        @Argument(help: "The part's number, 1 to 10000 (a part with this number is replaced).") var number: Int
        @Argument(help: "The file to store; - reads stdin.") var file: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let target = try self.target.upload
            let store = try await client.connect()
            defer { Task { await store.close() } }
            let part: UploadedPart
            if file == "-" {
                part = try await store.uploadPart(target, number: number, streaming: FileChunks(handle: FileHandle.standardInput))
            } else {
                let bar = ProgressBar(verb: "part")
                defer { bar.finish() }
                part = try await store.uploadPart(target, number: number, contentsOf: file, range: 0..<UInt64.max, progress: bar.progress)
            }
            print(partLine(part.number, part.size, part.checksum))
        }
    }

    struct Parts: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "parts", abstract: "List an upload's parts: `NUMBER SIZE xxh3-64:CHECKSUM`, one per line, by number.")
        @OptionGroup var target: UploadArguments
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let target = try self.target.upload
            let store = try await client.connect()
            defer { Task { await store.close() } }
            for part in try await store.allParts(target).parts { print(partLine(Int(part.number), part.size, part.checksum)) }
        }
    }

    struct Complete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an upload's object visible, made of the parts named (NUMBER:CHECKSUM, ascending), or of every part with --all.")
        @OptionGroup var target: UploadArguments
        @Argument(help: "The parts, as NUMBER:CHECKSUM (the checksum as `part` printed it).") var parts: [String] = []
        @Flag(name: .long, help: "Every part the upload holds now, in order of number.") var all = false
        @Flag(name: .shortAndLong, help: "Say on stderr what was stored (size, LSN).") var verbose = false
        @OptionGroup(title: "Conditions (the object becomes visible only if the key's newest version meets it)") var conditions: ConditionOptions
        @OptionGroup var client: ClientOptions

        func validate() throws {
            guard all != !parts.isEmpty else { throw ValidationError("name the parts, or give --all") }
            for p in parts { _ = try Self.parse(p) }
        }

        static func parse(_ text: String) throws -> (Int, UInt64) {
            let fields = text.split(separator: ":", maxSplits: 1)
            guard fields.count == 2, let number = Int(fields[0]), let checksum = parseChecksum(String(fields[1])) else {
                throw ValidationError("a part is NUMBER:CHECKSUM (e.g. 1:9c0ffee0a1b2c3d4), not '\(text)'")
            }
            return (number, checksum)
        }

        func run() async throws {
            let target = try self.target.upload
            let condition = try conditions.condition
            let store = try await client.connect()
            defer { Task { await store.close() } }
            let stored = try await store.allParts(target).parts
            var named: [UploadedPart] = []
            if all {
                named = stored.map { UploadedPart(number: Int($0.number), size: $0.size, checksum: $0.checksum) }
            } else {
                let sizes = Dictionary(stored.map { (Int($0.number), $0.size) }, uniquingKeysWith: { a, _ in a })
                for p in parts {
                    let (number, checksum) = try Self.parse(p)
                    named.append(UploadedPart(number: number, size: sizes[number] ?? 0, checksum: checksum))
                }
            }
            let receipt = try await store.completeMultipartUpload(target, parts: named, condition: condition)
            if verbose { writeStandardError("stored \(target.key): \(receipt.size) bytes in \(named.count) parts at LSN \(receipt.lsn)") }
        }
    }

    struct Abort: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Drop an upload and its parts.")
        @OptionGroup var target: UploadArguments
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let target = try self.target.upload
            let store = try await client.connect()
            defer { Task { await store.close() } }
            try await store.abortMultipartUpload(target)
        }
    }

    struct ListUploads: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ls", abstract: "List the open uploads: `KEY ID CREATED PARTS`, one per line, by key.")
        @Argument(help: "Only uploads of keys starting with this.") var prefix: String = ""
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let store = try await client.connect()
            defer { Task { await store.close() } }
            var cursor: UploadCursor?
            repeat {
                let page = try await store.listMultipartUploads(prefix: prefix, after: cursor)
                for u in page.uploads {
                    let created = Date(timeIntervalSince1970: Double(u.created) / 1e9).ISO8601Format()
                    print("\(u.key) \(u.id) \(created) \(u.partCount)")
                }
                cursor = page.nextCursor
            } while cursor != nil
        }
    }
}

/// The upload a command acts on: its key and id (as `catena upload create` printed it).
struct UploadArguments: ParsableArguments {
    @Argument(help: "The upload's key.") var key: String
    @Argument(help: "The upload's id (as `create` printed it).") var id: String

    func validate() throws { _ = try upload }

    var upload: MultipartUpload {
        get throws {
            guard let id = RequestID(parsing: id), id != .none else {
                throw ValidationError("an upload id is 32 hex digits, as `catena upload create` prints it, not '\(self.id)'")
            }
            return MultipartUpload(key: key, id: id)
        }
    }
}

/// A part as `upload part` and `upload parts` print it, and `upload complete` reads its number
/// and checksum back.
func partLine(_ number: Int, _ size: UInt64, _ checksum: UInt64) -> String {
    "\(number) \(size) xxh3-64:\(checksum.hex16)"
}

extension UploadCommand.Create: KeyedWrite { var writtenKey: String { key } }
extension UploadCommand.Part: KeyedWrite { var writtenKey: String { target.key } }
extension UploadCommand.Complete: KeyedWrite { var writtenKey: String { target.key } }
extension UploadCommand.Abort: KeyedWrite { var writtenKey: String { target.key } }
