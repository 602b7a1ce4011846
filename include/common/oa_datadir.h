/*
 * The files the agent keeps in its data directory (--data-dir). Each is written atomically as "<name>.tmp.<pid>"
 * then renamed; start-up removes temp files a killed process left behind.
 */
#ifndef OA_DATADIR_H
#define OA_DATADIR_H

#define OA_CONF_FILE_NAME "ocsp.json"  /* the persisted OCSP configuration */
#define OA_STAPLE_FILE_NAME "ocsp.der" /* the staple: the DER of the current valid response, absent when none */
#define OA_CLUSTER_FILE_NAME "cluster.json" /* cluster mode: the epoch and version of the configuration held */

#endif
