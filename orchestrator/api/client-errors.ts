import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import { PROBLEM_TYPE_BASE } from './problems';

/**
 * What the server answers when Node's HTTP parser refuses a request before Fastify sees it (a NUL
 * or a bare CR in a header, a header block over the limit, a malformed request line): the same RFC
 * 9457 problem document as every other error, naming the part that was wrong, instead of Fastify's
 * default `application/json` body. Nothing of the request is quoted or logged: the parser's error
 * carries the raw bytes (`rawPacket`), Authorization header included.
 */
const FIELD_BY_CODE: Record<string, string> = {
  HPE_INVALID_HEADER_TOKEN: 'header',
  HPE_INVALID_HEADER_VALUE: 'header',
  HPE_LF_EXPECTED: 'header',
  HPE_CR_EXPECTED: 'header',
  HPE_UNEXPECTED_CONTENT_LENGTH: 'header.content-length',
  HPE_INVALID_CONTENT_LENGTH: 'header.content-length',
  HPE_INVALID_TRANSFER_ENCODING: 'header.transfer-encoding',
  HPE_INVALID_CHUNK_SIZE: 'body',
  HPE_INVALID_URL: 'path',
  HPE_INVALID_METHOD: 'method',
  HPE_INVALID_VERSION: 'version',
};

export const clientErrorProblem = (err: Error & { code?: string }, socket: Socket): void => {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const code = err.code ?? '';
  const status = code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
  const field = status === 431 ? 'header' : status === 408 ? undefined : (FIELD_BY_CODE[code] ?? 'request');
  const title = STATUS_CODES[status] ?? 'Bad Request';
  const detail =
    status === 408
      ? 'the request took too long to arrive'
      : status === 431
        ? 'header: the request headers are too large'
        : `${field ?? 'request'}: is not valid HTTP`;
  const body = JSON.stringify({
    type: `${PROBLEM_TYPE_BASE}${status === 400 ? 'invalid-input' : status === 431 ? 'headers-too-large' : 'timeout'}`,
    title,
    status,
    detail,
    ...(field ? { field, errors: [{ field, message: 'is not valid HTTP' }] } : {}),
  });
  if (socket.writable)
    socket.write(
      `HTTP/1.1 ${status} ${title}\r\nContent-Type: application/problem+json; charset=utf-8\r\n` +
        `Cache-Control: no-store\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  socket.destroy();
};
