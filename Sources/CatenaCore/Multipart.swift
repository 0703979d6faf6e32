/// A part's size and content checksum: what a multipart object's checksum is made of.
public struct PartSummary: Hashable, Sendable {
    /// The part's size in bytes.
    public var size: UInt64
    /// XXH3-64 of the part's bytes.
    public var checksum: UInt64

    /// Creates a summary.
    public init(size: UInt64, checksum: UInt64) {
        self.size = size
        self.checksum = checksum
    }
}

/// A multipart upload that is open: created, neither completed nor aborted nor expired.
public struct UploadInfo: Hashable, Sendable {
    /// The key the object will have.
    public var key: Key
    /// The upload's id.
    public var id: UploadID
    /// The LSN of the record that created it.
    public var lsn: LSN
    /// Head-assigned time of its creation, ns since 1970.
    public var created: UInt64
    /// The object's content type, if one was given at creation.
    public var contentType: String?
    /// The object's user metadata, given at creation.
    public var userMetadata: [String: String]
    /// How many parts it holds now.
    public var partCount: Int

    /// Creates an upload description.
    public init(key: Key, id: UploadID, lsn: LSN, created: UInt64, contentType: String? = nil,
                userMetadata: [String: String] = [:], partCount: Int = 0) {
        self.key = key
        self.id = id
        self.lsn = lsn
        self.created = created
        self.contentType = contentType
        self.userMetadata = userMetadata
        self.partCount = partCount
    }
}

/// One part of an open multipart upload.
public struct PartInfo: Hashable, Sendable {
    /// The part's number (1 ... 10,000).
    public var number: UInt32
    /// The part's size in bytes.
    public var size: UInt64
    /// XXH3-64 of the part's bytes: what completing the upload names the part by.
    public var checksum: UInt64
    /// The LSN of the record that made it.
    public var lsn: LSN
    /// Head-assigned time of its upload, ns since 1970.
    public var timestamp: UInt64
    /// The chunk group that holds its bytes, and how many chunks.
    public var group: UploadID
    public var chunkCount: UInt32

    /// Creates a part description.
    public init(number: UInt32, size: UInt64, checksum: UInt64, lsn: LSN, timestamp: UInt64, group: UploadID, chunkCount: UInt32) {
        self.number = number
        self.size = size
        self.checksum = checksum
        self.lsn = lsn
        self.timestamp = timestamp
        self.group = group
        self.chunkCount = chunkCount
    }

    /// The part as a manifest names it.
    public var manifestPart: ManifestPart {
        ManifestPart(number: number, group: group, chunkCount: chunkCount, size: size, checksum: checksum)
    }
}

/// One page of the open multipart uploads, in order of key, then upload id.
public struct UploadPage: Hashable, Sendable {
    /// The uploads.
    public var uploads: [UploadInfo]
    /// Pass as `after` to get the next page; nil when this was the last page.
    public var nextCursor: UploadCursor?

    /// Creates a page.
    public init(uploads: [UploadInfo], nextCursor: UploadCursor?) {
        self.uploads = uploads
        self.nextCursor = nextCursor
    }
}

/// Where a listing of uploads goes on: after this key and upload id.
public struct UploadCursor: Hashable, Sendable {
    public var key: Key
    public var id: UploadID

    public init(key: Key, id: UploadID) {
        self.key = key
        self.id = id
    }
}

/// One page of an upload's parts, in order of part number.
public struct PartPage: Hashable, Sendable {
    /// The upload.
    public var upload: UploadInfo
    /// The parts.
    public var parts: [PartInfo]
    /// Pass as `after` to get the next page; nil when this was the last page.
    public var nextPartNumber: UInt32?

    /// Creates a page.
    public init(upload: UploadInfo, parts: [PartInfo], nextPartNumber: UInt32?) {
        self.upload = upload
        self.parts = parts
        self.nextPartNumber = nextPartNumber
    }
}

/// Checks an object's bytes, streamed in any pieces, against its content checksum: for a
/// multipart object each part against its own checksum as its last byte passes, then the
/// parts' checksum; for any other object the XXH3-64 of all the bytes.
public final class ContentVerifier {
    private let parts: [PartSummary]
    private let expected: UInt64
    private let hasher = XXH3Hasher()
    private var part = 0
    private var inPart: UInt64 = 0
    private var failure: String?

    /// A verifier for an object with `contentChecksum` and, if multipart, `parts`.
    public init(contentChecksum: UInt64, parts: [PartSummary]) {
        self.parts = parts
        self.expected = contentChecksum
    }

    /// Takes the next bytes.
    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard !parts.isEmpty else { return hasher.update(bytes) }
        var rest = bytes[...]
        while !rest.isEmpty {
            guard part < parts.count else {
                failure = failure ?? "more bytes than the parts hold"
                return
            }
            let take = Int(min(UInt64(rest.count), parts[part].size - inPart))
            hasher.update(UnsafeRawBufferPointer(rebasing: rest.prefix(take)))
            inPart += UInt64(take)
            rest = rest.dropFirst(take)
            closeFinishedParts()
        }
    }

    /// Takes the next bytes.
    public func update<Bytes: ContiguousBytes>(_ bytes: Bytes) {
        bytes.withUnsafeBytes { update($0) }
    }

    private func closeFinishedParts() {
        while part < parts.count, inPart == parts[part].size {
            if hasher.digest() != parts[part].checksum, failure == nil {
                failure = "part \(part + 1) of \(parts.count) does not match its checksum"
            }
            hasher.reset()
            part += 1
            inPart = 0
        }
    }

    /// After the last byte: nil if everything matched, else what did not.
    public func finish() -> String? {
        guard !parts.isEmpty else {
            return hasher.digest() == expected ? nil : "content checksum mismatch"
        }
        closeFinishedParts()
        if let failure { return failure }
        if part != parts.count { return "the bytes ended inside part \(part + 1) of \(parts.count)" }
        return Manifest.checksum(ofParts: parts) == expected ? nil : "the parts' checksum is not the object's content checksum"
    }
}
