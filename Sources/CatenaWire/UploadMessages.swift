import CatenaCore
import NIOCore

// The payloads of the multipart-upload listings. Creating an upload, adding a part, completing
// and aborting are writes (record types uploadCreate, chunk + uploadPart, manifest, uploadAbort);
// only the listings need frames of their own.

/// The payload of a ``FrameType/listUploads`` frame.
///
/// Layout: prefix (u16 length + bytes), after (u8 present, then key and upload id), limit (u32).
public struct ListUploadsRequest: Hashable, Sendable {
    /// Only uploads of keys starting with these bytes.
    public var prefix: [UInt8]
    /// Only uploads after this one (the previous page's cursor).
    public var after: UploadCursor?
    /// At most this many uploads.
    public var limit: Int

    public init(prefix: [UInt8] = [], after: UploadCursor? = nil, limit: Int = 1000) {
        self.prefix = prefix
        self.after = after
        self.limit = limit
    }

    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt16(clamping: prefix.count), endianness: .little)
        b.writeBytes(prefix.prefix(Int(UInt16.max)))
        b.writeCursor(after)
        b.writeInteger(UInt32(clamping: limit), endianness: .little)
        return b
    }

    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        guard let n = b.readInteger(endianness: .little, as: UInt16.self), let prefix = b.readBytes(length: Int(n)) else {
            throw CatenaError(.malformed, "upload listing request is truncated")
        }
        let after = try b.readCursor()
        guard let limit = b.readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "upload listing request is truncated")
        }
        self.init(prefix: prefix, after: after, limit: Int(limit))
    }
}

/// The payload of an ``FrameType/uploadPage`` frame: count (u32), the uploads (each as
/// ``UploadInfo``'s fields: key, upload id, LSN, created (u64), content type (u8 present + u16
/// length + UTF-8), metadata (u16 count, then name and value as u16 length + UTF-8), part count
/// (u32)), then the next cursor (u8 present, key, upload id).
public enum UploadPagePayload {
    public static func encode(_ page: UploadPage) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt32(page.uploads.count), endianness: .little)
        for u in page.uploads { b.writeUploadInfo(u) }
        b.writeCursor(page.nextCursor)
        return b
    }

    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> UploadPage {
        var b = payload
        guard let count = b.readInteger(endianness: .little, as: UInt32.self), Int(count) <= b.readableBytes else {
            throw CatenaError(.malformed, "upload page is truncated")
        }
        var uploads: [UploadInfo] = []
        for _ in 0..<count { uploads.append(try b.readUploadInfo()) }
        return UploadPage(uploads: uploads, nextCursor: try b.readCursor())
    }

    /// `page` cut so that its payload stays within `maxBytes` (at least one upload is kept); a
    /// cut page's cursor points after its last upload.
    public static func bounded(_ page: UploadPage, maxBytes: Int) -> UploadPage {
        var size = 4 + 1 + 2 + Key.maxLength + 16
        var scratch = ByteBuffer()
        for (i, u) in page.uploads.enumerated() {
            scratch.clear()
            scratch.writeUploadInfo(u)
            size += scratch.readableBytes
            if size > maxBytes && i > 0 {
                let kept = Array(page.uploads[..<i])
                return UploadPage(uploads: kept, nextCursor: UploadCursor(key: kept[i - 1].key, id: kept[i - 1].id))
            }
        }
        return page
    }
}

/// The payload of a ``FrameType/listParts`` frame: upload id (2 × u64), after part number
/// (u32; 0: from the first), limit (u32).
public struct ListPartsRequest: Hashable, Sendable {
    public var upload: UploadID
    public var after: UInt32
    public var limit: Int

    public init(upload: UploadID, after: UInt32 = 0, limit: Int = 1000) {
        self.upload = upload
        self.after = after
        self.limit = limit
    }

    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeRequestID(upload)
        b.writeInteger(after, endianness: .little)
        b.writeInteger(UInt32(clamping: limit), endianness: .little)
        return b
    }

    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        let upload = try b.readRequestID()
        guard let after = b.readInteger(endianness: .little, as: UInt32.self),
              let limit = b.readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "part listing request is truncated")
        }
        self.init(upload: upload, after: after, limit: Int(limit))
    }
}

/// The payload of a ``FrameType/partPage`` frame: the upload (as in ``UploadPagePayload``),
/// count (u32), each part (number u32, size u64, checksum u64, LSN, timestamp u64, chunk group
/// id 2 × u64, chunk count u32), then the next part number (u8 present + u32).
public enum PartPagePayload {
    /// The encoded size of one part.
    static let partSize = 4 + 8 + 8 + 16 + 8 + 16 + 4

    public static func encode(_ page: PartPage) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeUploadInfo(page.upload)
        b.writeInteger(UInt32(page.parts.count), endianness: .little)
        for p in page.parts {
            b.writeInteger(p.number, endianness: .little)
            b.writeInteger(p.size, endianness: .little)
            b.writeInteger(p.checksum, endianness: .little)
            b.writeLSN(p.lsn)
            b.writeInteger(p.timestamp, endianness: .little)
            b.writeRequestID(p.group)
            b.writeInteger(p.chunkCount, endianness: .little)
        }
        if let next = page.nextPartNumber {
            b.writeInteger(UInt8(1))
            b.writeInteger(next, endianness: .little)
        } else {
            b.writeInteger(UInt8(0))
        }
        return b
    }

    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> PartPage {
        var b = payload
        let upload = try b.readUploadInfo()
        guard let count = b.readInteger(endianness: .little, as: UInt32.self), Int(count) * partSize <= b.readableBytes else {
            throw CatenaError(.malformed, "part page is truncated")
        }
        var parts: [PartInfo] = []
        for _ in 0..<count {
            let number: UInt32 = b.readInteger(endianness: .little)!
            let size: UInt64 = b.readInteger(endianness: .little)!
            let checksum: UInt64 = b.readInteger(endianness: .little)!
            let lsn = try b.readLSN()
            let timestamp: UInt64 = b.readInteger(endianness: .little)!
            let group = try b.readRequestID()
            let chunks: UInt32 = b.readInteger(endianness: .little)!
            parts.append(PartInfo(number: number, size: size, checksum: checksum, lsn: lsn, timestamp: timestamp, group: group, chunkCount: chunks))
        }
        guard let hasNext = b.readInteger(as: UInt8.self) else { throw CatenaError(.malformed, "part page is truncated") }
        var next: UInt32?
        if hasNext != 0 {
            guard let n = b.readInteger(endianness: .little, as: UInt32.self) else { throw CatenaError(.malformed, "part page is truncated") }
            next = n
        }
        return PartPage(upload: upload, parts: parts, nextPartNumber: next)
    }
}

extension ByteBuffer {
    mutating func writeCursor(_ cursor: UploadCursor?) {
        guard let cursor else {
            writeInteger(UInt8(0))
            return
        }
        writeInteger(UInt8(1))
        writeKey(cursor.key)
        writeRequestID(cursor.id)
    }

    mutating func readCursor() throws(CatenaError) -> UploadCursor? {
        guard let present = readInteger(as: UInt8.self) else { throw CatenaError(.malformed, "upload cursor is truncated") }
        guard present != 0 else { return nil }
        return UploadCursor(key: try readKey(), id: try readRequestID())
    }

    mutating func writeUploadInfo(_ u: UploadInfo) {
        writeKey(u.key)
        writeRequestID(u.id)
        writeLSN(u.lsn)
        writeInteger(u.created, endianness: .little)
        writeObjectFields(contentType: u.contentType, metadata: u.userMetadata)
        writeInteger(UInt32(clamping: u.partCount), endianness: .little)
    }

    mutating func readUploadInfo() throws(CatenaError) -> UploadInfo {
        let key = try readKey()
        let id = try readRequestID()
        let lsn = try readLSN()
        guard let created = readInteger(endianness: .little, as: UInt64.self) else { throw CatenaError(.malformed, "upload info is truncated") }
        let (contentType, metadata) = try readObjectFields(of: "upload info")
        guard let parts = readInteger(endianness: .little, as: UInt32.self) else { throw CatenaError(.malformed, "upload info is truncated") }
        return UploadInfo(key: key, id: id, lsn: lsn, created: created, contentType: contentType, userMetadata: metadata, partCount: Int(parts))
    }
}
