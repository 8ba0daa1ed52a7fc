/**
 * The SQLSTATE codes the proxy itself reports, named as in PostgreSQL's errcodes.txt.
 *
 * @module
 */

/** SQLSTATE codes used by pgdog's own ErrorResponses. */
export const SqlState = {
  ConnectionException: "08000",
  ConnectionFailure: "08006",
  SqlclientUnableToEstablishSqlconnection: "08001",
  ProtocolViolation: "08P01",
  FeatureNotSupported: "0A000",
  InvalidAuthorizationSpecification: "28000",
  InvalidPassword: "28P01",
  InvalidCatalogName: "3D000",
  InvalidSqlStatementName: "26000",
  DuplicatePreparedStatement: "42P05",
  InsufficientPrivilege: "42501",
  /** An error outside PostgreSQL (a plugin failed). */
  SystemError: "58000",
  ObjectNotInPrerequisiteState: "55000",
  InvalidParameterValue: "22023",
  QueryCanceled: "57014",
  IdleInTransactionSessionTimeout: "25P03",
  InFailedSqlTransaction: "25P02",
  InvalidSavepointSpecification: "3B001",
  IdleSessionTimeout: "57P05",
  AdminShutdown: "57P01",
  CannotConnectNow: "57P03",
  TooManyConnections: "53300",
  ProgramLimitExceeded: "54000",
  SyntaxError: "42601",
  UndefinedObject: "42704",
  UndefinedTable: "42P01",
  InternalError: "XX000",
} as const;
