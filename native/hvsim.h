/* hvsim.h: the one header the cffi module includes; it pulls in every part of the core. */
#ifndef HVSIM_H
#define HVSIM_H

#include "hv_abi.h"
#include "core.h"
#include "ring.h"
#include "vhd_io.h"
#include "api/storvsc.h"
#include "storvsp.h"
#include "netplane.h"
#include "api/service.h"

#endif
